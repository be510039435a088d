"""From a checkpoint to two self-describing ONNX graphs (and their Q/DQ INT8 variants)."""
