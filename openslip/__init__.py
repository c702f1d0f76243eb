"""openslip: SLIP / CLIP / SimCLR language-image pre-training."""
