"""The model bundle: a folder with ``model.json``, ``weights.pt`` and exported artifacts.

``model.json`` describes everything needed to use the weights (architecture, preprocessing,
label and subtype names) and what is known about them (metrics, provenance, artifacts)::

    {"format": "edgepanc-bundle", "version": 1, "kind": "trained" | "quantized",
     "network": {...UNetConfig...}, "preprocessing": {...PreprocessingPlan...},
     "labels": {"0": "background", ...}, "subtypes": {"0": "subtype0", ...},
     "metrics": {...}, "provenance": {...},
     "artifacts": {name: {"file": "model_int8.onnx", "backend": ..., "precision": ..., ...}},
     "default_artifact": name | null, "classifier": true | false,
     "lesion_margins_mm": [mm per subtype] | []}

``classifier`` false: the subtype head was never trained (a data set without subtype labels), so
``edgepanc run`` reports no subtype.

``lesion_margins_mm``: how far (mm) the finishing step grows a lesion of each predicted subtype
into the gland, chosen by ``edgepanc train`` on the cases that chose the model
(:mod:`edgepanc.postprocessing.lesion_margin`); empty (older bundles): no margin.

``model.json`` is written last (see :func:`write_bundle`), so a folder that has one is complete.

Where bundles live by default: ``$EDGEPANC_HOME/bundles``, with ``EDGEPANC_HOME`` defaulting to
``$XDG_CACHE_HOME/edgepanc`` and then ``~/.cache/edgepanc`` (the layout ``TORCH_HOME`` uses).
``edgepanc run`` without ``--model`` takes the newest bundle (or ensemble) found there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepanc.errors import BundleError
from edgepanc.io.atomic import atomic_path, write_json_atomic
from edgepanc.networks.config import UNetConfig
from edgepanc.version import __version__

if TYPE_CHECKING:
    # torch only where weights are read or written: the ONNX Runtime path reads model.json alone
    import torch
    from torch import nn

    from edgepanc.networks.unet import MultiTaskUNet
    from edgepanc.preprocessing.plan import PreprocessingPlan

BUNDLE_FORMAT = "edgepanc-bundle"
BUNDLE_VERSION = 1
METADATA_FILE = "model.json"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's manifest (edgepanc.ensemble)
WEIGHTS_FILE = "weights.pt"
BUNDLE_KINDS = ("trained", "quantized")
DEFAULT_LABELS = {"0": "background", "1": "pancreas", "2": "lesion"}
DEFAULT_SUBTYPES = {"0": "subtype0", "1": "subtype1", "2": "subtype2"}
# State-dict prefixes that may differ between a training and a deployment network: the
# deep-supervision heads are only built when deep supervision is on and never used in eval.
_OPTIONAL_WEIGHT_PREFIXES = ("ds_heads.",)


@dataclass
class ModelBundle:
    """In-memory view of a bundle folder; :func:`load_bundle` and :func:`write_bundle` make one."""

    path: Path
    network: UNetConfig
    preprocessing: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    subtypes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SUBTYPES))
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_artifact: str | None = None
    kind: str = "trained"
    # Peak activation bytes per input voxel of one forward pass (the runtime's memory planner
    # needs it; measured when the bundle is written so that the runtime does not import torch).
    activation_bytes_per_voxel: float | None = None
    classifier: bool = True  # False: trained without subtype labels, the head names nothing
    lesion_margins_mm: tuple[float, ...] = ()  # per subtype; () grows no lesion

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def plan(self) -> PreprocessingPlan:
        """The preprocessing as a ``PreprocessingPlan`` (converted on each access).

        Imported here, not at module level, so that reading a bundle's metadata does not pull in
        the preprocessing stack (SimpleITK and friends).
        """
        from edgepanc.preprocessing.plan import PreprocessingPlan

        try:
            return PreprocessingPlan.from_dict(self.preprocessing)
        except (TypeError, ValueError) as exc:
            raise BundleError(self.metadata_path, f"preprocessing: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The content of ``model.json``."""
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "kind": self.kind,
            "network": self.network.to_dict(),
            "preprocessing": self.preprocessing,
            "labels": self.labels,
            "subtypes": self.subtypes,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "artifacts": self.artifacts,
            "default_artifact": self.default_artifact,
            "activation_bytes_per_voxel": self.activation_bytes_per_voxel,
            "classifier": self.classifier,
            "lesion_margins_mm": list(self.lesion_margins_mm),
        }

    def artifact_path(self, name: str | None = None) -> Path:
        """The file of artifact ``name`` (default: ``default_artifact``) inside the bundle."""
        name = name if name is not None else self.default_artifact
        if name is None or name not in self.artifacts:
            known = ", ".join(sorted(self.artifacts)) or "none"
            raise BundleError(self.path, f"no artifact named {name!r} (artifacts: {known})")
        return _inside(self.path, self.artifacts[name]["file"], f"artifacts.{name}.file")

    def add_artifact(
        self,
        name: str,
        file: str,
        backend: str,
        precision: str,
        make_default: bool = False,
        **info: Any,
    ) -> None:
        """Record an exported file (already written inside the bundle folder) in the metadata.

        Call :func:`save_bundle_metadata` afterwards to persist it.
        """
        self.artifacts[name] = {"file": file, "backend": backend, "precision": precision, **info}
        if make_default:
            self.default_artifact = name

    def load_network(self, map_location: str | torch.device = "cpu") -> MultiTaskUNet:
        """The network with the bundle's fp32 weights, in eval mode."""
        from edgepanc.networks.unet import MultiTaskUNet

        model = MultiTaskUNet(self.network)
        state = _read_state_dict(self.weights_path, map_location)
        _load_state_dict(model, state, self.weights_path)
        return model.to(map_location).eval()


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and check a bundle folder (or its ``model.json``); raise :class:`BundleError`."""
    folder = Path(path)
    if folder.name == METADATA_FILE and folder.is_file():
        folder = folder.parent
    if not folder.exists():
        raise BundleError(folder, "model bundle folder does not exist")
    if not folder.is_dir():
        raise BundleError(folder, "not a folder: a model bundle is a folder with model.json")
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise BundleError(folder, f"no {METADATA_FILE}: not an edgepanc model bundle")
    bundle = bundle_from_dict(folder, _read_json(metadata_path))
    _check_files(bundle)
    return bundle


def bundle_from_dict(folder: str | Path, data: Any) -> ModelBundle:
    """Build a :class:`ModelBundle` from parsed ``model.json`` content, checking every field."""
    metadata_path = Path(folder) / METADATA_FILE

    def fail(problem: str) -> BundleError:
        return BundleError(metadata_path, problem)

    if not isinstance(data, dict):
        raise fail("expected a JSON object")
    if data.get("format") != BUNDLE_FORMAT:
        raise fail(f"format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise fail(f"version must be a positive integer, got {version!r}")
    if version > BUNDLE_VERSION:
        raise fail(f"bundle version {version} is newer than this edgepanc reads ({BUNDLE_VERSION})")
    kind = data.get("kind", "trained")
    if kind not in BUNDLE_KINDS:
        raise fail(f"kind is {kind!r}, expected one of {BUNDLE_KINDS}")
    if not isinstance(data.get("network"), dict):
        raise fail("network: missing or not an object")
    try:
        network = UNetConfig.from_dict(data["network"])
    except (TypeError, ValueError) as exc:
        raise fail(f"network: {exc}") from None
    mappings = {}
    for key in ("preprocessing", "labels", "subtypes", "metrics", "provenance", "artifacts"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise fail(f"{key}: expected an object, got {type(value).__name__}")
        mappings[key] = value
    for name, info in mappings["artifacts"].items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            raise fail(f"artifacts.{name}: needs a 'file' entry")
        _inside(Path(folder), info["file"], f"artifacts.{name}.file")
    default_artifact = data.get("default_artifact")
    if default_artifact is not None and default_artifact not in mappings["artifacts"]:
        raise fail(f"default_artifact {default_artifact!r} is not among the artifacts")
    activation = data.get("activation_bytes_per_voxel")
    valid_number = isinstance(activation, int | float) and not isinstance(activation, bool)
    if activation is not None and not (valid_number and activation > 0):
        raise fail(f"activation_bytes_per_voxel must be a positive number, got {activation!r}")
    classifier = data.get("classifier", True)
    if not isinstance(classifier, bool):
        raise fail(f"classifier must be true or false, got {classifier!r}")
    margins = data.get("lesion_margins_mm", [])
    if not (
        isinstance(margins, list)
        and len(margins) in (0, len(mappings["subtypes"] or DEFAULT_SUBTYPES))
        and all(_is_margin(m) for m in margins)
    ):
        raise fail(
            "lesion_margins_mm must be empty or one number of mm (0 to 20) per subtype, "
            f"got {margins!r}"
        )
    return ModelBundle(
        path=Path(folder),
        network=network,
        preprocessing=mappings["preprocessing"],
        labels=mappings["labels"] or dict(DEFAULT_LABELS),
        subtypes=mappings["subtypes"] or dict(DEFAULT_SUBTYPES),
        metrics=mappings["metrics"],
        provenance=mappings["provenance"],
        artifacts=mappings["artifacts"],
        default_artifact=default_artifact,
        kind=kind,
        activation_bytes_per_voxel=None if activation is None else float(activation),
        classifier=classifier,
        lesion_margins_mm=tuple(float(m) for m in margins),
    )


def _is_margin(value: Any) -> bool:
    """A lesion margin a bundle may hold: a number of mm from 0 to 20 (NaN fails both bounds)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and 0 <= value <= 20


def save_bundle_metadata(bundle: ModelBundle) -> Path:
    """Write ``model.json`` atomically (creating the folder if needed); return its path."""
    bundle.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(bundle.metadata_path, bundle.to_dict())
    return bundle.metadata_path


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Save ``model``'s state dict as fp32 CPU tensors, atomically.

    Unwraps DistributedDataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) so the
    keys always match a plain :class:`MultiTaskUNet`.
    """
    import torch

    path = Path(path)
    state = {
        key: value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        for key, value in _unwrap(model).state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def write_bundle(
    path: str | Path,
    model: nn.Module,
    preprocessing: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    subtypes: Mapping[str, str] | None = None,
    kind: str = "trained",
    extra_provenance: Mapping[str, Any] | None = None,
    classifier: bool = True,
) -> ModelBundle:
    """Write a complete bundle: weights first, ``model.json`` last; return it.

    ``model`` must be a :class:`MultiTaskUNet` (possibly wrapped by DDP or ``torch.compile``);
    its ``config`` becomes the bundle's network.
    """
    from edgepanc.networks.unet import MultiTaskUNet

    network = _unwrap(model)
    if not isinstance(network, MultiTaskUNet):
        raise TypeError(f"expected a MultiTaskUNet, got {type(network).__name__}")
    bundle = ModelBundle(
        path=Path(path),
        network=network.config,
        preprocessing=dict(preprocessing),
        labels=dict(labels) if labels else dict(DEFAULT_LABELS),
        subtypes=dict(subtypes) if subtypes else dict(DEFAULT_SUBTYPES),
        metrics=dict(metrics or {}),
        provenance=provenance(**dict(extra_provenance or {})),
        kind=kind,
        classifier=classifier,
    )
    patch_size = preprocessing.get("patch_size")
    if patch_size:
        from edgepanc.networks.activation import network_activation_bytes_per_voxel

        bundle.activation_bytes_per_voxel = network_activation_bytes_per_voxel(
            network.config, patch_size
        )
    save_weights(network, bundle.weights_path)
    save_bundle_metadata(bundle)
    return bundle


def edgepanc_home() -> Path:
    """``$EDGEPANC_HOME``, else ``$XDG_CACHE_HOME/edgepanc``, else ``~/.cache/edgepanc``."""
    if os.environ.get("EDGEPANC_HOME"):
        return Path(os.environ["EDGEPANC_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "edgepanc"


def default_bundle_root() -> Path:
    """Where bundles go by default and where ``run`` looks for one: ``edgepanc_home()/bundles``."""
    return edgepanc_home() / "bundles"


def find_latest_bundle(root: str | Path | None = None) -> Path | None:
    """The folder of the most recently written ``model.json`` or ``ensemble.json`` under
    ``root`` (any depth); a member of an ensemble is never taken alone.

    ``root`` defaults to :func:`default_bundle_root`. Returns None if nothing is found; the
    folder is not validated here: :func:`load_bundle` does that with a clear message.
    """
    root = Path(root) if root is not None else default_bundle_root()
    if not root.is_dir():
        return None
    manifests = [p for p in root.rglob(ENSEMBLE_FILE) if p.is_file()]
    ensembles = {p.parent for p in manifests}
    candidates = manifests + [
        p
        for p in root.rglob(METADATA_FILE)
        if p.is_file() and not ensembles.intersection(p.parents)
    ]
    if not candidates:
        return None
    # Ties (same mtime) are broken by path so the choice is deterministic.
    newest = max(candidates, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    return newest.parent


def provenance(**extra: Any) -> dict[str, Any]:
    """Where and with what a bundle was made: versions, git commit, host and UTC time."""
    import torch  # bundles are made by training and quantization, which run torch anyway

    record = {
        "edgepanc_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def _git_commit() -> str | None:
    # The commit of the checkout edgepanc runs from; None for an installed wheel or without git.
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}") from None


def _check_files(bundle: ModelBundle) -> None:
    if not bundle.weights_path.is_file():
        raise BundleError(bundle.weights_path, "weights file is missing from the bundle")
    for name, info in bundle.artifacts.items():
        artifact = _inside(bundle.path, info["file"], f"artifacts.{name}.file")
        if not artifact.is_file():
            raise BundleError(artifact, f"file of artifact {name!r} is missing from the bundle")


def _inside(root: Path, relative: str, field: str) -> Path:
    """``root / relative`` if that stays inside the bundle, else BundleError naming model.json.

    A bundle is shared as a folder, so no path in its model.json may reach outside it: absolute
    paths, ``..`` and links resolving outside the folder are refused.
    """
    metadata_path = Path(root) / METADATA_FILE
    candidate = Path(relative)
    if candidate.is_absolute():
        raise BundleError(
            metadata_path, f"{field} {relative!r} is an absolute path, not inside the bundle"
        )
    if not candidate.parts or ".." in candidate.parts:
        raise BundleError(metadata_path, f"{field} {relative!r} is not inside the bundle")
    path = Path(root) / candidate
    if path.exists() and not path.resolve().is_relative_to(Path(root).resolve()):
        raise BundleError(
            metadata_path, f"{field} {relative!r} leads outside the bundle through a link"
        )
    return path


def _read_state_dict(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    import torch

    from edgepanc.io.plain_torch import load_plain_torch

    if not path.is_file():
        raise BundleError(path, "weights file is missing from the bundle")
    # Never unpickled: a bundle from elsewhere must not be able to run code on load.
    state = load_plain_torch(
        path, "cannot read weights: not a plain state dict", BundleError, map_location
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(path, "not a plain state dict (names to tensors)")
    return state


def _load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [
        k for k in expected if k not in state and not k.startswith(_OPTIONAL_WEIGHT_PREFIXES)
    ]
    unexpected = [
        k for k in state if k not in expected and not k.startswith(_OPTIONAL_WEIGHT_PREFIXES)
    ]
    mismatched = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise BundleError(
            path, "weights do not match the network in model.json: " + ", ".join(problems)
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _unwrap(model: nn.Module) -> nn.Module:
    from torch import nn

    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model
