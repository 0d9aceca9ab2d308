"""From a :class:`TrainConfig` to a finished run folder: data check, splits, plan, cache, loop.

Everything that can refuse a run is checked before anything is written to ``--out``: the data
set, the run folder (:func:`~edgepanc.training.run_folder.check_run_dir`), the ``--init-from``
weights, the checkpoint to resume, the plan, the cases, the device and the temperature sensor.
Only then is the folder created (:func:`~edgepanc.training.run_folder.run_folder`, which removes
what a run that fails before its first checkpoint created) and ``train.log`` opened with what was
logged so far.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepanc.blas import blas_on_one_thread
from edgepanc.ensemble import write_ensemble
from edgepanc.errors import InputError
from edgepanc.io.atomic import write_json_atomic
from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.config import TrainConfig
from edgepanc.training.distributed import (
    DistContext,
    context_from_env,
    init_distributed,
    shutdown_distributed,
)
from edgepanc.training.kfold import (
    SPLIT_SEED,
    stratified_folds,
    summarize_folds,
    validation_split,
)
from edgepanc.training.logs import RunLog
from edgepanc.training.run_folder import check_run_dir, run_folder
from edgepanc.training.selection import SELECTION_FILE, hold_out_selection
from edgepanc.training.time_budget import TimeBudget

if TYPE_CHECKING:
    import torch

    from edgepanc.bundle import ModelBundle

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"  # the validation split drawn for a data set that has none
PLANNING_KEY = "planning"  # plan.json's record of how patch, batch and spacing were planned


@dataclass(frozen=True)
class InitFrom:
    """``--init-from``: the trained bundle (network, plan) and its weights, read up front."""

    bundle: ModelBundle
    weights: dict[str, torch.Tensor]


def load_init_bundle(config: TrainConfig) -> InitFrom | None:
    """The bundle named by ``--init-from`` with its weights (None without it).

    The weights are read here, before the run folder exists, so a bundle whose weights cannot be
    used refuses the run without leaving anything behind.

    Example::

        >>> init = load_init_bundle(config.replace(init_from="work/first"))  # bundle, weights
    """
    if config.init_from is None:
        return None
    from edgepanc.bundle import load_bundle
    from edgepanc.errors import BundleError

    bundle = load_bundle(config.init_from)
    if not bundle.weights_path.is_file() or not bundle.preprocessing:
        raise BundleError(Path(config.init_from), "--init-from needs a trained bundle with weights")
    if config.features is not None and tuple(config.features) != tuple(bundle.network.features):
        raise InputError(
            Path(config.init_from),
            f"--features {list(config.features)} differ from the bundle's "
            f"{list(bundle.network.features)}; the weights cannot be reused",
        )
    if config.target_spacing is not None and tuple(config.target_spacing) != tuple(
        bundle.plan.target_spacing
    ):
        raise InputError(
            Path(config.init_from),
            f"--target-spacing {list(config.target_spacing)} differs from the bundle's "
            f"{list(bundle.plan.target_spacing)}; the weights were learned at the latter",
        )
    return InitFrom(bundle, bundle.load_network().state_dict())


def network_config_for(config: TrainConfig, init: Any = None) -> Any:
    """The preset's UNetConfig with the CLI's overrides applied (the init bundle's, if any)."""
    from edgepanc.networks import PRESETS

    network = init.network if init is not None else PRESETS[config.preset]
    changes: dict[str, Any] = {"deep_supervision": config.deep_supervision}
    if config.features is not None:
        changes["features"] = config.features
    network = network.replace(**changes)
    bad = [s for s in config.patch_size if s % network.min_divisor]
    if bad:
        raise InputError(
            Path(config.out),
            f"patch size {config.patch_size} must be a multiple of {network.min_divisor} per axis "
            f"for this network ({network.num_stages - 1} downsamplings)",
        )
    return network


def labelled_cases(data: Path) -> list[Any]:
    """Verify the data set (the data layer's errors stop us here) and return its labelled cases.

    The table of cases per split and subtype is logged, then the check's warnings (e.g. a label
    that is all background), one line per kind.

    Example::

        >>> cases = labelled_cases(Path("data"))  # train and validation cases with labels
    """
    from edgepanc.data.cases import discover_cases
    from edgepanc.data.verify import verify_dataset

    report = verify_dataset(data)
    log.info("data set %s:\n%s", data, report.table())
    for warning in report.warnings:
        log.warning("%s", warning)
    cases = [c for c in discover_cases(data) if c.label is not None and c.split != "test"]
    if not cases:
        raise InputError(data, "no labelled training cases")
    return cases


def fold_splits(cases: list[Any], config: TrainConfig) -> list[dict[str, list[str]]]:
    return stratified_folds(
        [c.case_id for c in cases], [c.subtype for c in cases], config.folds, config.seed
    )


def assign_split(cases: list[Any], split: dict[str, list[str]]) -> list[Any]:
    """The cases relabelled with this fold's train/validation split."""
    validation = set(split["validation"])
    return [
        dataclasses.replace(c, split="validation" if c.case_id in validation else "train")
        for c in cases
    ]


def with_validation_split(
    cases: list[Any], config: TrainConfig
) -> tuple[list[Any], dict[str, Any] | None]:
    """The cases with a validation split, and the split drawn for them (None if the data set
    has its own).

    A data set without validation cases gets a stratified, seeded split of its training cases
    (:func:`~edgepanc.training.kfold.validation_split`), announced in the log; a resumed run
    reads back the split its ``split.json`` holds, so it validates on the same cases.

    Example::

        >>> cases, drawn = with_validation_split(cases, config)  # drawn["validation"]: ids
    """
    if config.folds or any(c.split == "validation" for c in cases):
        return cases, None
    split_path = Path(config.out) / SPLIT_FILE
    if config.resume and split_path.is_file():
        drawn = _read_split(split_path, {c.case_id for c in cases})
        log.info("validating on the %d cases %s names", len(drawn["validation"]), split_path)
        return assign_split(cases, drawn), drawn
    if len(cases) < 2:
        raise InputError(
            Path(config.data),
            "one labelled case and no validation split: need at least two labelled cases, "
            "one to train on and one to validate",
        )
    split = validation_split([c.case_id for c in cases], [c.subtype for c in cases])
    drawn = {"seed": SPLIT_SEED, "stratified_by": "subtype", **split}
    log.warning(
        "the data set has no validation split: %d of its %d labelled cases were drawn for "
        "validation (stratified by subtype, seed %d), written to %s",
        len(split["validation"]),
        len(cases),
        SPLIT_SEED,
        split_path,
    )
    return assign_split(cases, split), drawn


def _read_split(path: Path, known: set[str]) -> dict[str, Any]:
    try:
        drawn = json.loads(path.read_text(encoding="utf-8"))
        validation = [str(c) for c in drawn["validation"]]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(path, f"not a validation split ({exc})") from None
    missing = sorted(set(validation) - known)
    if missing or not validation:
        problem = f"names cases the data set lacks: {', '.join(missing[:5])}" if missing else ""
        raise InputError(path, problem or "lists no validation case")
    return {**drawn, "validation": validation, "train": sorted(known - set(validation))}


def choose_plan(
    config: TrainConfig,
    cases: list[Any],
    run_dir: Path,
    init: InitFrom | None,
    shared: Any | None = None,
) -> Any:
    """A resumed run's own plan, the ``--init-from`` bundle's, ``shared`` (the one plan of all
    folds of a cross-validation), or one planned from the cases."""
    from edgepanc.preprocessing import PreprocessingPlan, plan_from_cases

    plan_path = run_dir / "plan.json"
    if config.resume and plan_path.is_file():
        try:
            saved = json.loads(plan_path.read_text(encoding="utf-8"))
            saved.pop(PLANNING_KEY, None)  # how the training was planned, not preprocessing
            return PreprocessingPlan.from_dict(saved)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(plan_path, f"not a preprocessing plan ({exc})") from None
    if init is not None:
        # The weights expect the bundle's spacing and intensity normalisation.
        return dataclasses.replace(init.bundle.plan, patch_size=tuple(config.patch_size))
    if shared is not None:
        return shared
    return plan_from_cases(cases, config.patch_size, config.target_spacing, seed=config.seed)


def cross_validation_plan(config: TrainConfig, cases: list[Any]) -> Any:
    """One preprocessing plan for every fold, fitted on all the cases the folds draw from, so
    that the fold models see the same input and ``run`` can average them as an ensemble (as
    nnU-Net plans once per data set)."""
    from edgepanc.preprocessing import plan_from_cases

    every = assign_split(cases, {"validation": []})
    return plan_from_cases(every, config.patch_size, config.target_spacing, seed=config.seed)


def plan_run(
    config: TrainConfig, cases: list[Any], device: Any = None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """``config`` with what the recipe left open planned from ``cases`` and the device
    (:mod:`edgepanc.training.planning`; ``device`` scripted or probed), and the record of how;
    ``(config, None)`` when the recipe pinned it all.

    Example::

        >>> config, record = plan_run(config, cases)  # record["patch_size"], ...
    """
    if not config.planned:
        return config, None
    from edgepanc.training.planning import Device, Fingerprint, describe_plan, plan_training

    device = Device.probe(config) if device is None else device
    config, record = plan_training(config, Fingerprint.of_cases(cases), device)
    log.info("%s", describe_plan(record).replace("# ", ""))
    return config, record


def train_one(
    config: TrainConfig,
    cases: list[Any],
    run_dir: Path,
    context: DistContext,
    guard: Any | None = None,
    augmentation: AugmentationConfig | None = None,
    run_log: RunLog | None = None,
    drawn_split: dict[str, Any] | None = None,
    planning: dict[str, Any] | None = None,
    budget: TimeBudget | None = None,
    shared_plan: Any | None = None,
) -> dict[str, Any]:
    """Train on ``cases`` (split "train"; validate on "validation") into ``run_dir``;
    ``drawn_split``, a validation split drawn for the run, is written there as ``split.json``;
    ``planning``, how the planner chose the step (:func:`plan_run`), goes into ``plan.json``;
    ``budget``, the wall time left to the run, plans its epoch count; ``shared_plan``, the
    preprocessing of every fold of a cross-validation (None: planned from ``cases``).

    Example::

        >>> best = train_one(config, cases, Path("work/a"), DistContext())  # best_epoch, ...
    """
    from edgepanc.thermal import ThermalGuard, ThermalLimits
    from edgepanc.training.checkpoint import load_checkpoint
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.loop import Trainer

    if context.is_main:
        check_run_dir(run_dir, config)
    init = load_init_bundle(config)
    network = network_config_for(config, init.bundle if init is not None else None)
    checkpoint = load_checkpoint(run_dir / "last.pt") if config.resume else None
    plan = choose_plan(config, cases, run_dir, init, shared_plan)
    cases, held_out, selection = hold_out_selection(cases, config.selection_share)
    log.info(
        "plan: target spacing %s mm, patch %s, intensity clip [%.0f, %.0f] HU",
        plan.target_spacing,
        plan.patch_size,
        plan.clip_low,
        plan.clip_high,
    )
    train_cases = prepare_cases(
        [c for c in cases if c.split == "train"], plan, "preprocessing train"
    )
    val_cases = prepare_cases(
        [c for c in cases if c.split == "validation"], plan, "preprocessing validation"
    )
    select_cases = prepare_cases(held_out, plan, "preprocessing selection")
    log.info(
        "%d training and %d validation cases%s",
        len(train_cases),
        len(val_cases),
        f", and {len(select_cases)} selection cases (they choose the model)"
        if select_cases
        else "",
    )
    if guard is None:
        limits = ThermalLimits(
            cpu_c=config.cpu_max_temp, gpu_c=config.gpu_max_temp, timeout_s=config.thermal_timeout
        )
        guard = ThermalGuard.discover(limits, require=config.require_thermal)
    trainer = Trainer(
        config,
        run_dir,
        train_cases,
        val_cases,
        plan,
        network,
        guard,
        context,
        augmentation,
        budget,
        select_cases,
    )
    if init is not None:
        trainer.start_from(init.weights, init.bundle.path)  # a resumed run then loads last.pt
    if not context.is_main:
        state = trainer.fit(checkpoint)
    else:
        with run_folder(run_dir):
            write_json_atomic(run_dir / "config.json", config.to_dict())
            saved_plan = plan.to_dict()
            if planning is not None:
                saved_plan[PLANNING_KEY] = planning
            write_json_atomic(run_dir / "plan.json", saved_plan)
            if drawn_split is not None:
                write_json_atomic(run_dir / SPLIT_FILE, drawn_split)
            if selection is not None:
                write_json_atomic(run_dir / SELECTION_FILE, selection)
            if run_log is not None:
                run_log.open(run_dir)
            try:
                state = trainer.fit(checkpoint)
            finally:
                if run_log is not None:
                    run_log.close_file()
    return {"best_epoch": state.best_epoch, "best_score": state.best_score, **state.best_metrics}


def run_training(
    config: TrainConfig,
    guard: Any | None = None,
    augmentation: AugmentationConfig | None = None,
    budget: TimeBudget | None = None,
) -> dict[str, Any]:
    """The whole ``edgepanc train``: one run, one fold, or every fold with a CV summary.

    With ``config.time_budget`` the run ends within that many seconds from ``budget``'s start
    (the command passes one started when it was; by default, from this call), its epoch count
    planned from the measured times (:mod:`edgepanc.training.time_budget`).

    Example::

        >>> summary = run_training(TrainConfig(data="data", out="work/a"))  # best_score, ...
    """
    import torch

    context = context_from_env()
    if budget is None and config.time_budget is not None:
        budget = TimeBudget(config.time_budget)
    run_log = RunLog() if context.is_main else None
    blas = blas_on_one_thread()
    try:
        if config.recipe is not None:
            log.info("recipe %s (%s)", config.recipe, config.recipe_reason)
        cases = labelled_cases(Path(config.data))
        if all(c.subtype is None for c in cases):
            log.warning(
                "%s has no subtype labels: training segmentation only (the subtype head is not "
                "trained; the bundle records that it has no classifier and `edgepanc run` "
                "names no subtype)",
                config.data,
            )
        config, planning = plan_run(config, cases)
        if context.enabled:
            device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
            init_distributed(context, torch.device(device))
        try:
            if config.folds == 0:
                cases, drawn = with_validation_split(cases, config)
                return train_one(
                    config,
                    cases,
                    Path(config.out),
                    context,
                    guard,
                    augmentation,
                    run_log,
                    drawn,
                    planning,
                    budget,
                )
            return _train_folds(
                config, cases, context, guard, augmentation, run_log, planning, budget
            )
        finally:
            shutdown_distributed()
    finally:
        blas.restore_original_limits()
        if run_log is not None:
            run_log.close()


def _train_folds(
    config: TrainConfig,
    cases: list[Any],
    context: DistContext,
    guard: Any | None,
    augmentation: AugmentationConfig | None,
    run_log: RunLog | None,
    planning: dict[str, Any] | None = None,
    budget: TimeBudget | None = None,
) -> dict[str, Any]:
    out = Path(config.out)
    splits = fold_splits(cases, config)
    folds = range(config.folds) if config.fold is None else [config.fold]
    if context.is_main and not config.resume and out.is_dir() and any(out.iterdir()):
        raise InputError(
            out, "run folder exists and is not empty; pass --resume or choose a new --out"
        )
    with run_folder(out) if context.is_main else nullcontext():
        if context.is_main:
            write_json_atomic(
                out / "splits.json", {"folds": config.folds, "seed": config.seed, "splits": splits}
            )
        results = []
        shared_plan = cross_validation_plan(config, cases)
        for fold in folds:
            log.info("fold %d of %d", fold, config.folds)
            fold_dir = out / f"fold_{fold}"
            fold_config = config.replace(
                fold=fold, resume=config.resume and (fold_dir / "last.pt").is_file()
            )
            results.append(
                train_one(
                    fold_config,
                    assign_split(cases, splits[fold]),
                    fold_dir,
                    context,
                    guard,
                    augmentation,
                    run_log,
                    planning=planning,
                    # each fold gets an equal share of what is left of the budget
                    budget=None if budget is None else budget.share(len(folds) - len(results)),
                    shared_plan=shared_plan,
                )
            )
        if config.fold is None and context.is_main:
            summary = summarize_folds(results)
            write_json_atomic(out / "cv_summary.json", summary)
            # last: a run folder with ensemble.json is complete, and `run` averages its folds
            write_ensemble(
                out,
                [f"fold_{fold}" for fold in folds],
                {"cross_validation": {"folds": config.folds, "seed": config.seed}},
            )
            return summary
        return results[0]
