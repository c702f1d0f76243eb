"""Benchmarks of the training step: `training.py` (`openslip bench train`), the 2021 way restated on openslip's
weights (`baseline.py`) and the original code from a user's checkout (`reference.py`)."""
