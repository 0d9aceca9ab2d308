"""Which model made a run's results, said on the console and in every case JSON.

:func:`bundle_summary` is the case JSON's ``model`` record: the bundle's path, its content id
(:func:`~edgepanc.runtime.model.model_identity`), the edgepanc version that made it and the one
running it, and what data it was trained on (:func:`edgepanc.synth.marker.trained_on`).
:func:`phantom_warning` is the one warning a run prints when a model trained on ``edgepanc synth``
phantoms meets scans that are not phantoms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepanc.bundle import ModelBundle
from edgepanc.synth.marker import is_phantom_scan, trained_on
from edgepanc.version import __version__


def bundle_summary(bundle: ModelBundle, model_id: str | None) -> dict[str, Any]:
    """The ``model`` record of a case JSON.

    Example: ``bundle_summary(load_bundle("model"), "3f2a...")["trained_on"]["synthetic"]`` ->
    ``True`` for a bundle trained on ``edgepanc synth`` data.
    """
    made = bundle.provenance.get("edgepanc_version")
    return {
        "path": str(bundle.path.absolute()),
        "id": model_id,
        "kind": bundle.kind,
        "made_with_edgepanc": made if isinstance(made, str) else None,
        "run_with_edgepanc": __version__,
        "created_utc": bundle.provenance.get("created_utc"),
        "trained_on": trained_on(bundle.provenance),
    }


def describe_bundle(summary: dict[str, Any]) -> str:
    """The console's line naming the model.

    Example: ``describe_bundle(summary)`` -> ``"model: /m (id 3f2a9c1d0b7e, made by edgepanc 0.1.0,
    trained on synthetic phantoms from /data)"``.
    """
    data = summary.get("trained_on")
    if data is None:
        what = "training data not recorded"
    elif data.get("synthetic"):
        what = f"trained on synthetic phantoms from {data.get('path')}"
    else:
        what = f"trained on {data.get('path')}"
    made = summary.get("made_with_edgepanc") or "unknown"
    ident = (summary.get("id") or "none")[:12]
    members = summary.get("ensemble_members")
    kind = f"ensemble of {members} models, " if members else ""
    return f"model: {summary['path']} ({kind}id {ident}, made by edgepanc {made}, {what})"


def phantom_warning(summary: dict[str, Any], scans: Sequence[Path]) -> str | None:
    """One warning when a phantom-trained model is run on scans that are not phantoms (no
    :data:`~edgepanc.synth.marker.PHANTOM_NOTE` in their header), else None.

    Example: ``phantom_warning(summary, [Path("ct.nii.gz")])`` -> ``"this model was trained
    only on synthetic phantoms ...: its masks mean nothing on real CT"``.
    """
    data = summary.get("trained_on")
    if not data or not data.get("synthetic"):
        return None
    real = [scan for scan in scans if not is_phantom_scan(scan)]
    if not real:
        return None
    which = (
        str(real[0]) if len(real) == 1 else f"{len(real)} of {len(scans)} scans (e.g. {real[0]})"
    )
    return (
        f"this model was trained only on synthetic phantoms (edgepanc synth) and {which} "
        "did not come from edgepanc synth: its masks mean nothing on real CT"
    )


def model_warnings(summary: dict[str, Any], defaulted: bool, scans: Sequence[Path]) -> list[str]:
    """What a run warns about its model: a phantom-trained bundle taken because no ``--model``
    was given (a demo), and one run on scans that are not phantoms (:func:`phantom_warning`).

    Example: ``model_warnings(summary, True, scans)`` -> ``["no --model given, and the newest
    bundle (/b) is a demo trained on synthetic phantoms; ...", "this model was trained ..."]``.
    """
    warnings = []
    if defaulted and (summary.get("trained_on") or {}).get("synthetic"):
        warnings.append(
            f"no --model given, and the newest bundle ({summary['path']}) is a demo trained on "
            "synthetic phantoms; pass --model to choose a model"
        )
    if (warning := phantom_warning(summary, scans)) is not None:
        warnings.append(warning)
    return warnings


__all__ = ["bundle_summary", "describe_bundle", "model_warnings", "phantom_warning"]
