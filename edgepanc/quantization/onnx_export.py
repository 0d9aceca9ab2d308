"""fp32 ONNX export of MultiTaskUNet and its check against PyTorch.

The graph has one input ``image`` [B, 1, D, H, W] and two outputs ``seg_logits`` [B, 3, D, H, W]
and ``cls_logits`` [B, 3]; the batch axis is dynamic, spatial sizes are fixed to the training
patch (the runtime always feeds whole patches). Opset 17 is the lowest with every op we need and
is what ONNX Runtime's quantizer and TensorRT both handle well.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgepanc.io.atomic import write_bytes_atomic
from edgepanc.metrics import dice

INPUT_NAME = "image"
OUTPUT_NAMES = ("seg_logits", "cls_logits")
OPSET = 17


def export_onnx(model: nn.Module, path: Path, patch_size: Sequence[int]) -> Path:
    """Write ``model`` (fp32, eval mode) as ONNX at ``path`` atomically and check the graph."""
    # onnx is the optional [quant] extra: imported where a graph is written, not with the module
    import onnx

    model = copy.deepcopy(model).float().eval().cpu()
    example = torch.zeros((1, 1, *patch_size), dtype=torch.float32)
    buffer = io.BytesIO()
    # The TorchScript exporter (dynamo=False) gives a plain, quantizer-friendly Conv graph and
    # needs no onnxscript; the dynamo exporter adds nothing for this static network.
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    write_bytes_atomic(path, proto.SerializeToString())
    return Path(path)


@dataclass(frozen=True)
class OnnxAgreement:
    """How closely an ONNX model reproduces PyTorch on a set of patches."""

    max_abs_seg: float  # largest absolute difference of any segmentation logit
    max_abs_cls: float
    mask_dice: float  # mean over patches and foreground classes of argmax-mask Dice
    same_class: float  # share of patches with the same predicted subtype

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def compare_with_torch(
    model: nn.Module, onnx_path: Path, patches: np.ndarray, intra_op_threads: int | None = None
) -> OnnxAgreement:
    """Run ``patches`` [N, 1, D, H, W] through PyTorch and ONNX Runtime and compare the outputs."""
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    model = model.float().eval().cpu()
    seg_diff = cls_diff = 0.0
    dices, same = [], []
    for patch in patches:
        batch = patch[None].astype(np.float32)
        with torch.inference_mode():
            seg_t, cls_t = (t.numpy() for t in model(torch.from_numpy(batch)))
        seg_o, cls_o = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        seg_diff = max(seg_diff, float(np.abs(seg_t - seg_o).max()))
        cls_diff = max(cls_diff, float(np.abs(cls_t - cls_o).max()))
        labels_t, labels_o = seg_t[0].argmax(0), seg_o[0].argmax(0)
        dices += [dice(labels_t == c, labels_o == c) for c in range(1, seg_t.shape[1])]
        same.append(int(cls_t.argmax() == cls_o.argmax()))
    return OnnxAgreement(seg_diff, cls_diff, float(np.mean(dices)), float(np.mean(same)))
