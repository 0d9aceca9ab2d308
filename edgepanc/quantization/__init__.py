"""The compression stage: channel pruning, QAT, INT8 PTQ, ONNX export, TensorRT engines."""
