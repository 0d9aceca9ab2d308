"""An ensemble: a folder whose ``ensemble.json`` names model bundles whose probabilities
``edgepanc run`` averages (the K fold models of ``edgepanc train --folds K``, say)::

    {"format": "edgepanc-ensemble", "version": 1, "members": ["fold_0", "fold_1", "fold_2"],
     "provenance": {...}}

Each member is a complete bundle folder inside the ensemble's folder (its own ``model.json``,
weights and, after ``quantize``, artifacts). The members must see the same input: one
preprocessing plan (patch included), the same labels, subtypes and classifier flag. A folder with
``ensemble.json`` has no ``model.json`` of its own; ``ensemble.json`` is written last, so a
folder that has one is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepanc.bundle import ENSEMBLE_FILE, ModelBundle, load_bundle
from edgepanc.errors import BundleError
from edgepanc.io.atomic import write_json_atomic

ENSEMBLE_FORMAT = "edgepanc-ensemble"
ENSEMBLE_VERSION = 1


@dataclass(frozen=True)
class Ensemble:
    """A read ensemble: its folder and its member bundles, in ``ensemble.json``'s order.

    Example: ``read_ensemble(Path("run")).members[0].path`` -> ``Path("run/fold_0")``.
    """

    path: Path
    members: tuple[ModelBundle, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.path / ENSEMBLE_FILE


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (it has ``ensemble.json``).

    Example: ``is_ensemble("run_with_folds")`` -> ``True``.
    """
    return (Path(path) / ENSEMBLE_FILE).is_file()


def read_ensemble(path: str | Path) -> Ensemble:
    """Read ``path``'s ``ensemble.json`` and every member bundle; BundleError (naming the file)
    for a malformed manifest, a member outside the folder, or members that disagree on what
    they see.

    Example: ``len(read_ensemble("run").members)`` -> ``3``.
    """
    folder = Path(path)
    manifest = folder / ENSEMBLE_FILE
    try:
        data = json.loads(manifest.read_text())
    except OSError as exc:
        raise BundleError(manifest, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BundleError(manifest, f"not valid JSON: {exc}") from None
    members = _member_names(manifest, data)
    bundles = tuple(load_bundle(_member_folder(folder, manifest, name)) for name in members)
    _check_members_agree(manifest, bundles)
    provenance = data.get("provenance", {})
    return Ensemble(folder, bundles, provenance if isinstance(provenance, dict) else {})


def write_ensemble(
    folder: str | Path, members: Sequence[str], provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write ``folder/ensemble.json`` naming ``members`` (folders inside ``folder``, each a
    bundle already written) after checking that they form an ensemble; return its path.

    Example: ``write_ensemble("run", ["fold_0", "fold_1", "fold_2"])`` -> ``Path("run/ensemble.json")``.
    """
    folder = Path(folder)
    manifest = folder / ENSEMBLE_FILE
    data = {
        "format": ENSEMBLE_FORMAT,
        "version": ENSEMBLE_VERSION,
        "members": list(members),
        "provenance": dict(provenance or {}),
    }
    names = _member_names(manifest, data)
    bundles = [load_bundle(_member_folder(folder, manifest, name)) for name in names]
    _check_members_agree(manifest, bundles)
    write_json_atomic(manifest, data)
    return manifest


def _member_names(manifest: Path, data: Any) -> list[str]:
    if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
        raise BundleError(manifest, f"not an edgepanc ensemble (format {ENSEMBLE_FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or not 1 <= version <= ENSEMBLE_VERSION:
        raise BundleError(manifest, f"version {version!r} is not one this edgepanc reads")
    members = data.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise BundleError(manifest, "members must be a list of folder names")
    if len(members) < 2:
        raise BundleError(manifest, f"an ensemble needs at least 2 members, got {len(members)}")
    if len(set(members)) != len(members):
        raise BundleError(manifest, "a member is named twice")
    return members


def _member_folder(folder: Path, manifest: Path, name: str) -> Path:
    """``folder/name``, refused when it leaves ``folder`` (an absolute path, ``..``, a link)."""
    member = (folder / name).resolve()
    if not member.is_relative_to(folder.resolve()) or member == folder.resolve():
        raise BundleError(manifest, f"member {name!r} is not a folder inside {folder}")
    return folder / name


def _check_members_agree(manifest: Path, bundles: Sequence[ModelBundle]) -> None:
    first = bundles[0]
    for bundle in bundles[1:]:
        for what in ("preprocessing", "labels", "subtypes", "classifier"):
            if getattr(bundle, what) != getattr(first, what):
                raise BundleError(
                    manifest,
                    f"members {first.path.name} and {bundle.path.name} differ in {what}; an "
                    "ensemble's members must see the same input",
                )


__all__ = [
    "ENSEMBLE_FILE",
    "ENSEMBLE_FORMAT",
    "Ensemble",
    "is_ensemble",
    "read_ensemble",
    "write_ensemble",
]
