"""Which training recipe, and which ``run`` backend, suit this machine; standard library only
(the probe imports what it asks lazily), so ``edgepanc doctor`` can say it without the training
stage or torch.

``edgepanc train`` without ``--recipe`` picks the recipe :func:`choose_recipe` names: a CUDA GPU
-> ``gpu``; a CPU that computes bf16 natively (AVX512-BF16 or AMX) -> ``cpu-bf16``; any other
CPU -> ``cpu-fp32``, where bf16 is emulated and about ten times slower
(docs/measurements/cpu_recipe.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    """What chooses the recipe: whether torch sees a CUDA GPU, and the CPU's feature flags.

    Tests script it; :meth:`probe` reads this machine.

    Example: ``choose_recipe(Machine(cuda=False, cpu_flags=frozenset({"avx2"})))[0]`` ->
    ``"cpu-fp32"``.
    """

    cuda: bool
    cpu_flags: frozenset[str]

    @classmethod
    def probe(cls) -> Machine:
        """This machine, through the project's device and CPU-feature detection."""
        from edgepanc.backends.devices import cuda_available
        from edgepanc.backends.openvino_backend import machine_cpu_flags

        return cls(cuda=cuda_available(), cpu_flags=machine_cpu_flags())


def choose_recipe(machine: Machine, device: str = "auto") -> tuple[str, str]:
    """The recipe for ``machine`` (and ``--device``) and why, in words.

    Example::

        >>> choose_recipe(Machine(cuda=False, cpu_flags=frozenset({"amx_bf16"})))
        ('cpu-bf16', 'no CUDA GPU; the CPU computes bf16 natively (amx_bf16)')
    """
    # The flags with which oneDNN computes bf16 in hardware, as the OpenVINO backend checks them.
    from edgepanc.backends.openvino_backend import NATIVE_BF16_FLAGS

    if device == "cuda" or (device == "auto" and machine.cuda):
        return "gpu", "--device cuda" if device == "cuda" else "torch sees a CUDA GPU"
    where = "--device cpu" if device == "cpu" else "no CUDA GPU"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in machine.cpu_flags]
    if native:
        return "cpu-bf16", f"{where}; the CPU computes bf16 natively ({', '.join(native)})"
    return "cpu-fp32", (
        f"{where}; the CPU has neither {' nor '.join(NATIVE_BF16_FLAGS)}, so bf16 would be "
        "emulated (about 10x slower): fp32"
    )


def choose_run_backend(machine: Machine, backends: Sequence[str]) -> tuple[str, str]:
    """The backend ``edgepanc run --backend auto`` will use for a quantized bundle here, and why.

    Example::

        >>> choose_run_backend(Machine(False, frozenset()), ["torch", "onnxruntime", "openvino"])
        ('openvino or onnxruntime', "run times the bundle's OpenVINO and ONNX Runtime ...")
    """
    if machine.cuda:
        if "tensorrt" in backends:
            return "tensorrt", "a CUDA GPU with TensorRT: the bundle's TensorRT engines"
        return "torch", "a CUDA GPU without TensorRT: the PyTorch weights in fp16"
    cpu = [name for name in ("openvino", "onnxruntime") if name in backends]
    if len(cpu) == 2:
        return "openvino or onnxruntime", (
            "run times the bundle's OpenVINO and ONNX Runtime variants within tolerance on "
            "this CPU and keeps the fastest"
        )
    if cpu:
        return cpu[0], f"on the CPU, the bundle's {cpu[0]} variants"
    return "torch", "neither ONNX Runtime nor OpenVINO is installed: the PyTorch weights"


def recommended_commands(machine: Machine, backends: Sequence[str]) -> dict[str, str]:
    """What ``edgepanc doctor`` recommends on ``machine``: the training command with the recipe
    ``train`` would pick, and the ``run`` command with the backend it would use.

    Example: ``recommended_commands(Machine(True, frozenset()), ["torch"])["recipe"]`` ->
    ``"gpu"``.
    """
    recipe, why = choose_recipe(machine)
    backend, backend_why = choose_run_backend(machine, backends)
    device = "cuda" if machine.cuda else "cpu"
    return {
        "recipe": recipe,
        "recipe_reason": why,
        "backend": backend,
        "backend_reason": backend_why,
        "train": f"edgepanc train --data DATA --out MODEL --recipe {recipe}",
        "run": f"edgepanc run SCANS --model MODEL --out OUT --device {device}",
    }


__all__ = ["Machine", "choose_recipe", "choose_run_backend", "recommended_commands"]
