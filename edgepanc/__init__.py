"""edgepanc: pancreas CT from data set to a fast, small model on modest hardware.

This package is the edge runtime and everything the stages share. It never imports the training
(``train``) or compression (``quant``) stages at module level. The Python API is loaded on first
use, so that ``import edgepanc`` stays cheap (no torch, no SimpleITK, no ONNX Runtime).

Example::

    import edgepanc
    result = edgepanc.segment("ct.nii.gz", model="bundles/pancreas")
    result.mask, result.subtype, result.lesion_volume_ml
"""

from __future__ import annotations

from typing import Any

from edgepanc.version import __version__

# Names served by edgepanc.api, imported when first asked for.
_API = ("Result", "load_bundle", "segment")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from edgepanc import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgepanc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
