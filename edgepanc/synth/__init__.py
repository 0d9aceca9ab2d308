"""Synthetic abdominal CT phantoms behind ``edgepanc synth``.

``generate_phantom(PhantomSpec(...))`` makes one case in memory; ``synthesize(SynthConfig(...))``
writes a whole data set in the quiz or nnU-Net raw layout; ``nontriviality`` measures how far
simple intensity rules are from solving it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: the runtime reads only edgepanc.synth.marker, and the generator's imports
# (scipy.interpolate among them) would add about 0.4 s to every `edgepanc run`.
_EXPORTS = {
    "SynthConfig": "dataset",
    "plan_cases": "dataset",
    "synthesize": "dataset",
    "Phantom": "phantom",
    "PhantomSpec": "phantom",
    "generate_phantom": "phantom",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = ["Phantom", "PhantomSpec", "SynthConfig", "generate_phantom", "plan_cases", "synthesize"]
