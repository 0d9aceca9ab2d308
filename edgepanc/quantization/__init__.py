"""The compression stage: channel pruning, QAT, INT8 PTQ, ONNX export, TensorRT engines.

``edgepanc quantize`` runs :func:`edgepanc.quantization.pipeline.run_quantize`: the stages in
:mod:`edgepanc.quantization.stages` over one context, each variant a typed record
(:mod:`edgepanc.quantization.variants`). The other modules are the techniques the stages use.
Importing this package, its config, variants or report does not import torch.
"""
