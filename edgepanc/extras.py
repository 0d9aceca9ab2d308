"""Optional dependencies: which extra brings which module, and one line when one is missing.

``pip install edgepanc`` is the runtime (``run``, ``evaluate``, ``doctor``, ``synth`` on ONNX
Runtime or OpenVINO); training and compression need PyTorch and ONNX, which the ``train`` and
``quant`` extras bring. A command that needs a missing module stops with one line naming the
extra that installs it, before it has written anything.
"""

from __future__ import annotations

import importlib.util

from edgepanc.errors import EdgepancError

# Top-level module -> (the name a user knows it by, the extra that installs it).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "train"),
    "onnx": ("ONNX", "quant"),
    "onnxscript": ("onnxscript", "quant"),
    "nncf": ("NNCF", "quant"),
    "torch_tensorrt": ("Torch-TensorRT", "gpu"),
}
# What each command checks before it starts; the modules it may load later are caught by the CLI.
COMMAND_NEEDS: dict[str, tuple[str, ...]] = {
    "train": ("torch",),
    "quantize": ("torch", "onnx"),
}
# The extra a command names: ``quant`` includes ``train``, so quantize always names its own.
COMMAND_EXTRA: dict[str, str] = {"train": "train", "quantize": "quant"}


class MissingExtraError(EdgepancError):
    """A command needs an optional module that is not installed (exit 2, like an input error)."""

    def __init__(self, command: str, module: str) -> None:
        label, extra = OPTIONAL_MODULES[module]
        extra = COMMAND_EXTRA.get(command, extra)
        self.command, self.module, self.extra = command, module, extra
        super().__init__(f"edgepanc {command} needs {label}: pip install 'edgepanc[{extra}]'")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it.

    Example: ``installed("numpy")`` -> ``True``; ``installed("torch")`` -> ``False`` after
    ``pip install edgepanc`` without extras.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False


def require(command: str) -> None:
    """Raise :class:`MissingExtraError` for the first module ``command`` needs that is missing.

    Example: ``require("train")`` returns None where torch is installed, and otherwise raises
    ``edgepanc train needs PyTorch: pip install 'edgepanc[train]'``.
    """
    for module in COMMAND_NEEDS.get(command, ()):
        if not installed(module):
            raise MissingExtraError(command, module)


def missing_extra(command: str | None, exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The error to show for ``exc`` raised inside ``command``, or None for any other module.

    Example: ``missing_extra("run", ModuleNotFoundError(name="torch"))`` -> the error whose
    message is ``edgepanc run needs PyTorch: pip install 'edgepanc[train]'``.
    """
    root = (exc.name or "").split(".")[0]
    if command is None or root not in OPTIONAL_MODULES:
        return None
    return MissingExtraError(command, root)
