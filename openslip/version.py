"""openslip's version, in a module of its own so that what records it (checkpoints, reports, `--version`) need
not import the package's public API above everything else."""

__version__ = "0.1.0"
