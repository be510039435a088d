"""adtr-edge: ADTR anomaly detection from training to TensorRT engines on edge GPUs."""

__version__ = "0.1.0"
