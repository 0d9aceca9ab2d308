"""From a :class:`TrainConfig` to a finished run folder: data check, splits, plan, cache, loop.

Run folder rules: a new or empty ``--out`` starts a run; a non-empty one is refused unless
``--resume`` is given and it holds a run of the same experiment (same ``config.identity()``)
with a ``last.pt``. Nothing is ever overwritten otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

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
from edgepanc.training.kfold import stratified_folds, summarize_folds
from edgepanc.training.logs import attach_file_log

log = logging.getLogger(__name__)


def load_init_bundle(config: TrainConfig) -> Any:
    """The bundle named by ``--init-from`` (None without it); it must hold trained weights."""
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
    return bundle


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


def check_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Refuse a folder that is not empty, unless it is a resumable run of the same experiment."""
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "--out exists and is not a folder")
    if not config.resume:
        if existing:
            raise InputError(
                run_dir,
                "run folder exists and is not empty; pass --resume to continue it, "
                "or choose a new --out (nothing is overwritten)",
            )
        return
    saved_path = run_dir / "config.json"
    if not saved_path.is_file() or not (run_dir / "last.pt").is_file():
        raise InputError(
            run_dir, "--resume given, but this folder holds no run to resume (config.json, last.pt)"
        )
    saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
    if saved.identity() != config.identity():
        differing = sorted(
            k
            for k, v in config.to_dict().items()
            if k in saved.to_dict()
            and saved.to_dict()[k] != v
            and k not in ("data", "out", "resume")
        )
        raise InputError(
            run_dir,
            "--resume given, but the run was started with different settings: "
            + ", ".join(f"{k}={saved.to_dict()[k]!r}" for k in differing),
        )


def labelled_cases(data: Path) -> list[Any]:
    """Verify the data set (the data layer's errors stop us here) and return its labelled cases."""
    from edgepanc.data.cases import discover_cases
    from edgepanc.data.verify import verify_dataset

    verify_dataset(data)
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


def train_one(
    config: TrainConfig,
    cases: list[Any],
    run_dir: Path,
    context: DistContext,
    guard: Any | None = None,
    augmentation: AugmentationConfig | None = None,
) -> dict[str, Any]:
    """Train on ``cases`` (split "train"; validate on "validation") into ``run_dir``."""
    from edgepanc.preprocessing import PreprocessingPlan, plan_from_cases
    from edgepanc.thermal import ThermalGuard, ThermalLimits
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.loop import Trainer

    init = load_init_bundle(config)
    network = network_config_for(config, init)
    if context.is_main:
        check_run_dir(run_dir, config)
        run_dir.mkdir(parents=True, exist_ok=True)
    handler = attach_file_log(run_dir) if context.is_main else None
    try:
        plan_path = run_dir / "plan.json"
        if config.resume and plan_path.is_file():
            plan = PreprocessingPlan.from_dict(json.loads(plan_path.read_text()))
        elif init is not None:
            # The weights expect the bundle's spacing and intensity normalisation.
            plan = dataclasses.replace(init.plan, patch_size=tuple(config.patch_size))
        else:
            plan = plan_from_cases(
                cases, config.patch_size, config.target_spacing, seed=config.seed
            )
        if context.is_main:
            write_json_atomic(run_dir / "config.json", config.to_dict())
            write_json_atomic(plan_path, plan.to_dict())
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
        log.info("%d training and %d validation cases", len(train_cases), len(val_cases))
        if guard is None:
            limits = ThermalLimits(
                cpu_c=config.cpu_max_temp,
                gpu_c=config.gpu_max_temp,
                timeout_s=config.thermal_timeout,
            )
            guard = ThermalGuard.discover(limits, require=config.require_thermal)
        trainer = Trainer(
            config, run_dir, train_cases, val_cases, plan, network, guard, context, augmentation
        )
        if init is not None:
            trainer.start_from(init)  # a resumed run then loads its own last.pt over it
        state = trainer.fit(resume=config.resume)
        return {
            "best_epoch": state.best_epoch,
            "best_score": state.best_score,
            **state.best_metrics,
        }
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def run_training(
    config: TrainConfig, guard: Any | None = None, augmentation: AugmentationConfig | None = None
) -> dict[str, Any]:
    """The whole ``edgepanc train``: one run, one fold, or every fold with a CV summary."""
    import torch

    context = context_from_env()
    out = Path(config.out)
    cases = labelled_cases(Path(config.data))
    if context.enabled:
        init_distributed(
            context,
            torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"),
        )
    try:
        if config.folds == 0:
            return train_one(config, cases, out, context, guard, augmentation)
        splits = fold_splits(cases, config)
        folds = range(config.folds) if config.fold is None else [config.fold]
        if context.is_main:
            if not config.resume and out.is_dir() and any(out.iterdir()):
                raise InputError(
                    out, "run folder exists and is not empty; pass --resume or choose a new --out"
                )
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                out / "splits.json", {"folds": config.folds, "seed": config.seed, "splits": splits}
            )
        results = []
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
                )
            )
        if config.fold is None and context.is_main:
            summary = summarize_folds(results)
            write_json_atomic(out / "cv_summary.json", summary)
            return summary
        return results[0]
    finally:
        shutdown_distributed()
