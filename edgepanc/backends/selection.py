"""Pick the predictor a bundle should run with on this machine, and say why.

A variant the compression stage measured outside the accuracy tolerance (its record's
``within_tolerance`` is false, or the bundle's ``quantization.json`` says so) is never a
candidate, whatever was asked, unless ``allow_failed`` (``run --allow-failed-variant``) is given;
then it runs with a warning. Among the others, ``auto`` with an :class:`AutoTiming` (what ``run``
does) times every runnable candidate on this machine and keeps the fastest, cached per bundle and
CPU model (:mod:`edgepanc.backends.choice`). Without timing it prefers what the bundle's author
chose (``default_artifact``), then the fastest artifact by the latency the compression stage
measured, then the bundle's own fp32 weights in eager torch, which always run. Explicit choices
narrow the candidates; when none is left the error says what each artifact lacked. ``openvino``
runs the bundle's OpenVINO artifacts or its fp32 ONNX file, in bf16 where the CPU computes bf16
natively (2.7x to 7.7x faster per patch than ONNX Runtime fp32 there:
docs/measurements/openvino_latency.md), else in fp32.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepanc.backends import devices
from edgepanc.backends.base import BACKENDS, PRECISIONS, BackendUnavailable, Predictor
from edgepanc.backends.choice import (
    AutoTiming,
    MeasuredChoice,
    bundle_content_id,
    measured_choice,
)
from edgepanc.errors import BundleError

log = logging.getLogger("edgepanc.backends")

WEIGHTS_FILE = "weights.pt"
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class BackendChoice:
    """One way to run a bundle: ``artifact`` None means the bundle's fp32 weights in torch."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    reason: str

    def describe(self) -> str:
        source = f"artifact {self.artifact!r}" if self.artifact else "bundle weights"
        return f"{self.backend} {self.precision} on {self.device} ({source}): {self.reason}"


@dataclass(frozen=True)
class _Bundle:
    """What selection needs from a bundle, whether a ModelBundle or a model.json-like dict."""

    root: Path
    artifacts: Mapping[str, Mapping[str, Any]]
    default_artifact: str | None
    source: Any


def available_backends() -> list[str]:
    """Backends this machine can run, in :data:`BACKENDS` order (torch always)."""
    from edgepanc.backends.tensorrt_backend import tensorrt_problem

    names = ["torch"]
    # Found, not imported: each engine's import costs memory (onnxruntime about 20 MB, openvino
    # about 50 MB) that a run on the other never uses. Its CPU provider is always built in.
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        names.append("openvino")
    if tensorrt_problem() is None:
        names.append("tensorrt")
    return names


def artifact_problem(
    record: Mapping[str, Any], device: str, root: Path, backends: list[str]
) -> str | None:
    """Why ``record`` cannot run on ``device`` here, or None when it can."""
    backend = record.get("backend")
    precision = record.get("precision")
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}"
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}"
    if backend not in backends:
        return f"{backend} is not available on this machine"
    recorded_device = record.get("device")
    if recorded_device is not None and recorded_device != device:
        return f"built for {recorded_device}, running on {device}"
    if backend == "tensorrt" and device != "cuda":
        return "TensorRT runs only on cuda"
    if backend == "torch" and (precision == "int8" or (precision == "fp16" and device == "cpu")):
        return f"torch {precision} is not offered on {device}"
    if backend == "onnxruntime" and device == "cuda":
        from edgepanc.backends.onnxruntime_backend import CUDA_PROVIDER, onnxruntime_providers

        if CUDA_PROVIDER not in onnxruntime_providers():
            return "onnxruntime has no CUDA provider here"
    if backend == "openvino":
        problem = _openvino_problem(precision, device)
        if problem is not None:
            return problem
    if backend == "torch" and device == "cuda" and not devices.cuda_available():
        return "torch sees no CUDA device"
    file = record.get("file")
    if backend != "torch" and not file:
        return "record names no file"
    if file and not (root / file).is_file():
        return f"file {file} is missing"
    return None


def choose_backend(
    bundle: Any,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    allow_failed: bool = False,
    timing: AutoTiming | None = None,
    also_failed: Collection[str] = (),
) -> BackendChoice:
    """Decide how to run ``bundle`` here. See the module docstring; only ``timing`` loads
    models (each candidate, to time it). ``also_failed``: artifacts to treat as failed besides
    the bundle's own (those that failed in another member of an ensemble).

    Example: ``choose_backend(load_bundle("bundles/pancreas"), precision="int8").artifact`` ->
    ``"onnx_int8_minmax"``, or a BundleError when every INT8 variant failed the tolerance.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    view = _view(bundle)
    device = devices.resolve_device(device)
    # Probing ONNX Runtime and TensorRT costs imports (about half a second); a bundle with only
    # PyTorch weights and no explicit request needs none of them.
    needs_probe = backend != "auto" or bool(view.artifacts)
    backends = available_backends() if needs_probe else ["torch"]
    if backend != "auto" and backend not in backends:
        raise BackendUnavailable(
            f"backend {backend!r} is not available here (available: {', '.join(backends)})"
        )

    def wanted(record: Mapping[str, Any]) -> bool:
        return (backend == "auto" or record.get("backend") == backend) and (
            precision == "auto" or record.get("precision") == precision
        )

    candidates = dict(view.artifacts)
    if backend == "openvino":
        candidates.update(_openvino_from_onnx(view.artifacts, precision))
    problems: dict[str, str] = {}
    runnable: list[tuple[str, Mapping[str, Any]]] = []
    failed = failed_variants(view) | set(also_failed)
    for name, record in candidates.items():
        if not wanted(record):
            continue
        problem = artifact_problem(record, device, view.root, backends)
        if problem is None and name in failed and not allow_failed:
            problem = f"{FAILED_PROBLEM}; --allow-failed-variant runs it anyway"
        if problem is None:
            runnable.append((name, record))
        else:
            problems[name] = problem

    def choice(name: str, record: Mapping[str, Any], reason: str) -> BackendChoice:
        if name in failed:
            reason += f"; WARNING: {name} {FAILED_PROBLEM}, run on purpose"
        return BackendChoice(record["backend"], record["precision"], device, name, reason)

    by_name = dict(runnable)
    # Eager torch is timed only when nothing else runs: importing it costs the process about
    # 0.5 GB that the run would then keep, and it is the slowest CPU backend measured.
    pool = [(n, r) for n, r in runnable if r.get("backend") != "torch"] or runnable
    if timing is not None and backend == "auto" and len(pool) > 1:
        timed = _timed_choice(view, pool, device, precision, timing)
        return choice(timed.artifact, by_name[timed.artifact], timed.reason(timing.cpu))
    if view.default_artifact in by_name:
        return choice(
            view.default_artifact, by_name[view.default_artifact], "the bundle's default artifact"
        )
    timed = sorted(
        (float(r["latency_ms"]), n) for n, r in runnable if r.get("latency_ms") is not None
    )
    if timed:
        latency, name = timed[0]
        reason = f"fastest runnable artifact by recorded latency ({latency:g} ms)"
        if view.default_artifact:
            default_problem = problems.get(view.default_artifact, "not what was asked for")
            reason += f"; default {view.default_artifact!r}: {default_problem}"
        return choice(name, by_name[name], reason)
    if runnable:
        name, record = runnable[0]
        return choice(
            name, record, "the only runnable artifact matching the request (no latency recorded)"
        )
    torch_precision = "fp32" if precision == "auto" else precision
    weights_problem = artifact_problem(
        {"backend": "torch", "precision": torch_precision}, device, view.root, backends
    )
    if (
        backend in ("auto", "torch")
        and torch_precision in TORCH_PRECISIONS
        and weights_problem is None
    ):
        reason = "asked for torch" if backend == "torch" else "no runnable artifact"
        if problems:
            reason += " (" + "; ".join(f"{n}: {p}" for n, p in problems.items()) + ")"
        return BackendChoice("torch", torch_precision, device, None, reason)
    details = (
        "; ".join(f"{n}: {p}" for n, p in problems.items()) or "the bundle has no such artifact"
    )
    if weights_problem and backend in ("auto", "torch"):
        details += f"; bundle weights: {weights_problem}"
    raise BundleError(
        view.root,
        f"nothing runs backend={backend} precision={precision} on {device}: {details}",
    )


def build_predictor(choice: BackendChoice, bundle: Any) -> Predictor:
    """Load the model ``choice`` names and wrap it in its predictor."""
    view = _view(bundle)
    record = view.artifacts.get(choice.artifact, {}) if choice.artifact else {}
    if choice.backend == "torch":
        from edgepanc.backends.torch_backend import TorchPredictor

        return TorchPredictor(
            _torch_network(view, record), choice.device, choice.precision, artifact=choice.artifact
        )
    path = view.root / record["file"]
    if choice.backend == "onnxruntime":
        from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor, default_providers

        return OnnxRuntimePredictor(
            path,
            default_providers(choice.device),
            precision=choice.precision,
            artifact=choice.artifact,
        )
    if choice.backend == "openvino":
        from edgepanc.backends.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(path, choice.precision, artifact=choice.artifact)
    from edgepanc.backends.tensorrt_backend import TensorRTPredictor

    return TensorRTPredictor(path, precision=choice.precision, artifact=choice.artifact)


def select_predictor(
    bundle: Any,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    measure: bool = True,
    allow_failed: bool = False,
    timing: AutoTiming | None = None,
) -> Predictor:
    """Choose (:func:`choose_backend`, timing the candidates here unless ``measure`` is False),
    log the choice and why in one line, and load the predictor. A variant that failed the
    accuracy tolerance (only with ``allow_failed``) is logged as a warning.

    Example: ``select_predictor(load_bundle("bundles/pancreas")).name`` -> ``"openvino"``.
    """
    if measure and timing is None:
        timing = AutoTiming()
    choice = choose_backend(bundle, backend, device, precision, allow_failed, timing)
    failed = choice.artifact is not None and choice.artifact in failed_variants(_view(bundle))
    log.log(logging.WARNING if failed else logging.INFO, "backend: %s", choice.describe())
    return build_predictor(choice, bundle)


FAILED_PROBLEM = "failed the accuracy tolerance against fp32"


def failed_variants(bundle: Any) -> set[str]:
    """The artifacts measured outside the accuracy tolerance: their records say so, or, for a
    bundle written before records carried the verdict, its ``quantization.json`` does.

    Example: ``failed_variants(load_bundle("demo"))`` -> ``{"pruned_onnx_int8_minmax"}``.
    """
    view = _view(bundle)
    report: dict[str, Any] = {}
    try:
        data = json.loads((view.root / "quantization.json").read_text())
        report = {v["name"]: v.get("within_tolerance") for v in data.get("variants", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # no report (a trained bundle) or an unreadable one: the records decide alone
    return {
        name
        for name, record in view.artifacts.items()
        if record.get("within_tolerance", report.get(name)) is False
    }


def _timed_choice(
    view: _Bundle,
    pool: list[tuple[str, Mapping[str, Any]]],
    device: str,
    precision: str,
    timing: AutoTiming,
) -> MeasuredChoice:
    """Time the candidates in ``pool`` (or take the cached choice) and return it."""

    def loader(name: str, record: Mapping[str, Any]) -> Any:
        probe = BackendChoice(record["backend"], record["precision"], device, name, "timing")
        return lambda: build_predictor(probe, view)

    key = "|".join(
        (bundle_content_id(view.root, view.artifacts), timing.cpu, f"auto/{device}/{precision}")
    )
    return measured_choice(
        {name: loader(name, record) for name, record in pool}, _patch_size(view), timing, key
    )


def _patch_size(view: _Bundle) -> tuple[int, ...]:
    source = view.source
    plan = (
        source.get("preprocessing")
        if isinstance(source, Mapping)
        else getattr(source, "preprocessing", None)
    )
    patch = (plan or {}).get("patch_size") if isinstance(plan, Mapping) else None
    if not patch:
        raise BundleError(view.root, "model.json has no preprocessing patch_size to time with")
    return tuple(int(p) for p in patch)


def _openvino_problem(precision: Any, device: str) -> str | None:
    from edgepanc.backends.openvino_backend import (
        OPENVINO_PRECISIONS,
        machine_cpu_flags,
        native_bf16_problem,
    )

    if device != "cpu":
        return f"OpenVINO runs on the CPU, not on {device}"
    if precision not in OPENVINO_PRECISIONS:
        return f"OpenVINO does not run {precision}"
    return native_bf16_problem(machine_cpu_flags()) if precision == "bf16" else None


def _openvino_from_onnx(
    artifacts: Mapping[str, Mapping[str, Any]], precision: str
) -> dict[str, Mapping[str, Any]]:
    """The fp32 ONNX artifacts as OpenVINO candidates under their own names, in the precision
    asked for, or for ``auto`` bf16 where the CPU has it natively and fp32 elsewhere."""
    from edgepanc.backends.openvino_backend import machine_cpu_flags, native_bf16_problem

    if precision == "auto":
        precision = "fp32" if native_bf16_problem(machine_cpu_flags()) else "bf16"
    if precision not in ("fp32", "bf16"):
        return {}
    # A variant the compression stage measured in OpenVINO on the same file and precision
    # lends its accuracy verdict: fp32 ONNX passing in ONNX Runtime says nothing about bf16.
    measured = {
        (r.get("file"), r.get("precision")): r.get("within_tolerance")
        for r in artifacts.values()
        if r.get("backend") == "openvino"
    }
    derived = {}
    for name, record in artifacts.items():
        if not (
            record.get("backend") == "onnxruntime"
            and record.get("precision") == "fp32"
            and str(record.get("file", "")).endswith(".onnx")
        ):
            continue
        # The recorded latency was ONNX Runtime's, so it is not carried over.
        entry = {k: v for k, v in record.items() if k != "latency_ms"}
        entry |= {"backend": "openvino", "precision": precision}
        if (record.get("file"), precision) in measured:
            entry["within_tolerance"] = measured[(record.get("file"), precision)]
        derived[name] = entry
    return derived


def _view(bundle: Any) -> _Bundle:
    if isinstance(bundle, _Bundle):
        return bundle
    get = (
        bundle.get
        if isinstance(bundle, Mapping)
        else lambda key, default=None: getattr(bundle, key, default)
    )
    root = next(
        (get(key) for key in ("root", "path", "directory", "dir") if get(key) is not None), None
    )
    if root is None:
        raise ValueError("bundle gives no folder (expected a 'root' or 'path')")
    return _Bundle(
        root=Path(root),
        artifacts=get("artifacts") or {},
        default_artifact=get("default_artifact"),
        source=bundle,
    )


def _torch_network(view: _Bundle, record: Mapping[str, Any]) -> Any:
    """The fp32 network: a torch artifact's own weights (e.g. pruned), else the bundle's."""
    from edgepanc.io.plain_torch import load_plain_torch
    from edgepanc.networks import build_network
    from edgepanc.networks.config import UNetConfig

    source = view.source
    if (
        not record.get("file")
        and not isinstance(source, Mapping)
        and hasattr(source, "load_network")
    ):
        return source.load_network()
    network = record.get("network") or (
        source.get("network") if isinstance(source, Mapping) else getattr(source, "network", None)
    )
    if network is None:
        raise BundleError(view.root, "model.json has no network description")
    config = network if isinstance(network, UNetConfig) else UNetConfig.from_dict(network)
    weights = view.root / (record.get("file") or WEIGHTS_FILE)
    if not weights.is_file():
        raise BundleError(weights, "weights file not found")
    model = build_network(config)
    state = load_plain_torch(weights, "not a plain state dict", BundleError)  # never unpickled
    try:
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as exc:
        raise BundleError(weights, f"cannot load the weights: {str(exc).splitlines()[0]}") from exc
    return model.eval()


__all__ = [
    "BackendChoice",
    "artifact_problem",
    "available_backends",
    "build_predictor",
    "choose_backend",
    "failed_variants",
    "select_predictor",
]
