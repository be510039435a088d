"""Training: feature cache, the training loop, checkpoints and threshold calibration."""
