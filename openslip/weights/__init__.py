"""Weights on disk: openslip's atomic, checksummed checkpoints (`checkpoint.py`), the bounded, pickle-free
readers of every weight file (`safe_load.py`), files written whole (`atomic.py`), and the OpenAI / open_clip /
reference layouts mapped onto openslip's names (`clip_layout.py`)."""
