"""The stages of ``edgepanc quantize``, each a module over one context (:mod:`.context`).

:mod:`.inputs` checks the inputs and makes the context; :mod:`.fp32` measures the reference and
exports fp32 ONNX; :mod:`.int8` quantizes; :mod:`.tensorrt` builds engines; :mod:`.pruning`
prunes and fine-tunes; :mod:`.assembly` times every variant and writes the bundle. Every
variant's result is built in one place, :func:`.measure.measure`. The order is
:func:`edgepanc.quantization.pipeline.compress`.
"""
