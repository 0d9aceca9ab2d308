"""The model ``edgepanc run`` runs with: a bundle's predictor plus what the pipeline plans with.

:func:`load_model` reads the bundle, picks its backend (:func:`edgepanc.backends.select_predictor`),
and records the preprocessing plan, the network's activation footprint and the process's
resident memory once all of it is loaded. An ensemble folder (:mod:`edgepanc.ensemble`) gives
one predictor that averages its members, each run with the same variant. On a bundle whose
chosen artifact runs in ONNX Runtime nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from edgepanc.backends.base import Predictor
from edgepanc.backends.choice import AutoTiming
from edgepanc.backends.selection import (
    build_predictor,
    choose_backend,
    failed_variants,
    select_predictor,
)
from edgepanc.bundle import ModelBundle, load_bundle
from edgepanc.ensemble import Ensemble, is_ensemble, read_ensemble
from edgepanc.errors import BundleError
from edgepanc.inferers.ensemble import EnsemblePredictor
from edgepanc.memory import current_rss
from edgepanc.preprocessing.plan import PreprocessingPlan

log = logging.getLogger("edgepanc.backends")


@dataclass(frozen=True)
class LoadedModel:
    """A predictor with what the pipeline needs to know about the network behind it.

    ``baseline_rss`` is the process's resident memory once imports and the model are loaded: the
    floor of every case's peak, which the memory budget plans on top of.

    Example: ``LoadedModel(predictor, plan, 64.0, current_rss()).patch_size`` -> ``(64, 96, 96)``.
    """

    predictor: Predictor
    plan: PreprocessingPlan
    activation_bytes_per_voxel: float
    baseline_rss: int
    artifact: str | None = None
    classifier: bool = True  # False: the bundle's subtype head was never trained
    model_id: str | None = None  # see model_identity; None for a model not read from a bundle
    members: int = 1  # the models averaged on each tile (an ensemble's); each holds its engine
    # How far the finishing step grows a lesion of each subtype (the bundle's; () none).
    lesion_margins_mm: tuple[float, ...] = ()

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The network's input patch (z, y, x) in voxels."""
        return tuple(int(p) for p in self.plan.patch_size)  # type: ignore[return-value]

    @property
    def target_spacing(self) -> tuple[float, float, float]:
        """The spacing (z, y, x, mm) the network sees its input at."""
        return tuple(float(s) for s in self.plan.target_spacing)  # type: ignore[return-value]


def load_model(
    bundle_path: Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    allow_failed_variant: bool = False,
) -> LoadedModel:
    """Load the bundle at ``bundle_path`` and a predictor for it on this machine.

    A bundle written before the activation footprint was stored gets it measured here, which
    imports torch.

    An ensemble folder (``ensemble.json``) loads every member with the variant chosen for the
    first, among those that passed the accuracy tolerance in every member, and averages them
    (:class:`~edgepanc.inferers.ensemble.EnsemblePredictor`).

    Example: ``load_model(Path("bundles/pancreas"), backend="onnxruntime").predictor.name`` ->
    ``"onnxruntime"``.
    """
    if is_ensemble(bundle_path):
        return _load_ensemble(
            read_ensemble(bundle_path), backend, device, precision, allow_failed_variant
        )
    bundle = load_bundle(bundle_path)
    plan = PreprocessingPlan.from_dict(bundle.preprocessing)
    activation = _activation_bytes_per_voxel(bundle, plan)
    predictor = select_predictor(
        bundle, backend, device, precision, allow_failed=allow_failed_variant
    )
    artifact = getattr(predictor, "artifact", None)
    return LoadedModel(
        predictor=predictor,
        plan=plan,
        activation_bytes_per_voxel=activation,
        baseline_rss=current_rss(),
        artifact=artifact,
        classifier=bundle.classifier,
        model_id=model_identity(bundle, artifact),
        lesion_margins_mm=bundle.lesion_margins_mm,
    )


def _load_ensemble(
    ensemble: Ensemble, backend: str, device: str, precision: str, allow_failed: bool
) -> LoadedModel:
    first = ensemble.members[0]
    plan = PreprocessingPlan.from_dict(first.preprocessing)
    activation = _activation_bytes_per_voxel(first, plan)
    failed = set().union(*(failed_variants(member) for member in ensemble.members))
    choice = choose_backend(
        first, backend, device, precision, allow_failed, AutoTiming(), also_failed=failed
    )
    log.log(
        logging.WARNING if choice.artifact in failed else logging.INFO,
        "backend: %s; the same for all %d members of the ensemble",
        choice.describe(),
        len(ensemble.members),
    )
    for member in ensemble.members:
        if choice.artifact is not None and choice.artifact not in member.artifacts:
            raise BundleError(
                member.path,
                f"has no artifact {choice.artifact!r}, which the other members run; quantize "
                "the ensemble folder as a whole",
            )
    predictor = EnsemblePredictor([build_predictor(choice, m) for m in ensemble.members])
    return LoadedModel(
        predictor=predictor,
        plan=plan,
        activation_bytes_per_voxel=activation,
        baseline_rss=current_rss(),
        artifact=choice.artifact,
        classifier=first.classifier,
        model_id=ensemble_identity(ensemble, choice.artifact),
        members=len(ensemble.members),
    )


def _activation_bytes_per_voxel(bundle: ModelBundle, plan: PreprocessingPlan) -> float:
    """The footprint the bundle records, or, for a bundle written before it was stored, measured
    here (which imports torch)."""
    if bundle.activation_bytes_per_voxel is not None:
        return bundle.activation_bytes_per_voxel
    from edgepanc.networks.activation import network_activation_bytes_per_voxel

    return network_activation_bytes_per_voxel(bundle.network, plan.patch_size)


def ensemble_identity(ensemble: Ensemble, artifact: str | None) -> str:
    """What a case JSON records as an ensemble's model: SHA-256 over ``ensemble.json`` and each
    member's :func:`model_identity`.

    Example: ``ensemble_identity(read_ensemble("run"), "openvino_bf16")`` -> ``"9d01aa..."``.
    """
    from edgepanc.runtime.outputs import file_sha256

    parts = [file_sha256(ensemble.manifest_path)]
    parts += [model_identity(member, artifact) for member in ensemble.members]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_identity(bundle: ModelBundle, artifact: str | None) -> str:
    """What a case JSON records as the model that made it: SHA-256 of ``model.json`` and of the
    file the predictor runs (the artifact, else the fp32 weights), so that a retrained or
    re-quantized bundle, or another variant of it, counts as another model.

    Example: ``model_identity(load_bundle("bundles/pancreas"), None)`` -> ``"1c4e0b..."``.
    """
    from edgepanc.runtime.outputs import file_sha256

    weights = bundle.artifact_path(artifact) if artifact is not None else bundle.weights_path
    return hashlib.sha256(
        f"{file_sha256(bundle.metadata_path)}\n{file_sha256(weights)}".encode()
    ).hexdigest()


__all__ = ["LoadedModel", "ensemble_identity", "load_model", "model_identity"]
