"""INT8 forms of an ONNX export, run by ONNX Runtime or handed to TensorRT as Q/DQ graphs.

    quantize          the Q/DQ quantiser for both targets (``--target tensorrt``: symmetric Q/DQ that
                      TensorRT fuses and ONNX Runtime runs exactly; ``--target cpu``: ONNX Runtime's
                      fast integer form), its calibration data and the metadata it records
    matched           ``quantize-matched``: the head refitted on the INT8 backbone's own features
    int8_head         the CPU form's head: the whitening MatMul in INT8
    attention_fusion  the CPU form's attention blocks as ONNX Runtime's MultiHeadAttention

The keep-float plan (which backbone layers stay out of INT8) is ``engine.onnx_tools.float_plan``,
shared with the TensorRT builder; the ONNX helpers and the calibration data come from ``engine`` too.
Nothing here imports tensorrt.
"""
