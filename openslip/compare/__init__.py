"""`openslip compare`: the SLIP paper's experiment (CLIP vs SimCLR vs SLIP, equal budgets, every evaluation)."""

from openslip.compare.experiment import CompareConfig
from openslip.compare.methods import METHODS
from openslip.compare.runner import run_compare

__all__ = ["METHODS", "CompareConfig", "run_compare"]
