"""``edgepanc train``: train the multi-task network into a run folder that is a model bundle.

The training stage (``edgepanc/training/``) is imported inside the command, so the runtime commands work
without it; only its option lists come from ``edgepanc.training.config``, which needs the standard
library alone.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgepanc.commands.params import FiniteFloat
from edgepanc.errors import InputError
from edgepanc.training.config import HEAD_STATISTICS_MODES, LESION_DICE_MODES


def _parse_triple(text: str | None, kind: type, name: str) -> tuple | None:
    """``"64"`` -> (64, 64, 64); ``"32,64,64"`` -> (32, 64, 64), in (z, y, x) order."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number or three comma-separated numbers", param_hint=name
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise click.BadParameter(
            f"{text!r}: need one or three positive values (z,y,x)", param_hint=name
        )
    return values


def _parse_fold(text: str | None) -> int | None | str:
    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a fold number or 'all'", param_hint="--fold") from None


@click.command()
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set folder (quiz or nnU-Net layout).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder to create (becomes a model bundle).",
)
@click.option(
    "--preset",
    type=click.Choice(["tiny", "cpu", "default"]),
    default="cpu",
    show_default=True,
    help="Network size.",
)
@click.option(
    "--features",
    "--width",
    "features",
    default=None,
    help="Channels per stage, e.g. 16,32,64,128 (overrides the preset).",
)
@click.option(
    "--depth",
    type=click.IntRange(2, 7),
    default=None,
    help="Stages (with --width as one number: doubling widths).",
)
@click.option(
    "--patch-size",
    default="32,64,64",
    show_default=True,
    help="Patch (z,y,x) voxels, or one number for a cube.",
)
@click.option(
    "--target-spacing",
    default=None,
    help="Target spacing (z,y,x) mm, or one number; default: median of the data.",
)
@click.option("--batch-size", type=click.IntRange(1, 512), default=2, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1, 1000000), default=50, show_default=True)
@click.option("--lr", type=FiniteFloat(0, 1, min_open=True), default=3e-3, show_default=True)
@click.option("--weight-decay", type=FiniteFloat(0, 1), default=3e-5, show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(0, 100000), default=2, show_default=True)
@click.option("--seg-weight", type=FiniteFloat(0, 100), default=1.0, show_default=True)
@click.option("--cls-weight", type=FiniteFloat(0, 100), default=0.5, show_default=True)
@click.option(
    "--teacher-forcing",
    type=FiniteFloat(0, 1),
    default=0.5,
    show_default=True,
    help="Share of patches whose subtype head pools under the reference lesion mask.",
)
@click.option(
    "--teacher-forcing-end",
    type=FiniteFloat(0, 1),
    default=None,
    help="Move that share linearly to this value by the last step (default: constant).",
)
@click.option(
    "--teacher-mask-jitter",
    type=click.IntRange(0, 8),
    default=0,
    show_default=True,
    help="Shift the reference lesion by up to this many voxels per axis and grow it by up to as "
    "many or shrink it by one before the head pools under it (margins like a prediction's).",
)
@click.option(
    "--head-statistics",
    type=click.Choice(HEAD_STATISTICS_MODES),
    default="augmented",
    show_default=True,
    help="Whether the subtype head's attenuation statistics read the intensity-augmented "
    "training patch or the same patch before intensity augmentation.",
)
@click.option(
    "--head-refit/--no-head-refit",
    default=False,
    show_default=True,
    help="After the last epoch, refit the subtype head alone on the training cases' runtime "
    "tiles (as `edgepanc run` tiles and weighs them), then validate again. With --resume on a "
    "finished run: refit it without training again.",
)
@click.option(
    "--lesion-fraction",
    type=FiniteFloat(0, 1),
    default=0.6,
    show_default=True,
    help="Share of patches centred on a lesion voxel.",
)
@click.option(
    "--pancreas-fraction",
    type=FiniteFloat(0, 1),
    default=0.25,
    show_default=True,
    help="Share centred on a pancreas voxel.",
)
@click.option(
    "--lesion-dice",
    type=click.Choice(LESION_DICE_MODES),
    default="batch",
    show_default=True,
    help="Lesion Dice over the whole batch, or per patch with lesion (small lesions count more).",
)
@click.option("--deep-supervision/--no-deep-supervision", default=False, show_default=True)
@click.option(
    "--init-from",
    default=None,
    help="Start from this trained bundle's weights, network and preprocessing plan "
    "(fine-tuning on new data); --preset/--features/--target-spacing then come from it.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True
)
@click.option(
    "--amp/--no-amp",
    default=None,
    help="Mixed precision: fp16 on CUDA (default on), bf16 on CPU (default off).",
)
@click.option(
    "--folds",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="K-fold cross-validation over train+validation (0: the data set's split).",
)
@click.option("--fold", default=None, help="Which fold to train (0..K-1) or 'all'.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--val-every", type=click.IntRange(1, 100000), default=1, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0, 100000),
    default=0,
    show_default=True,
    help="Validations without improvement before stopping (0: never).",
)
@click.option("--cpu-max-temp", type=FiniteFloat(20, 120), default=68.0, show_default=True)
@click.option("--gpu-max-temp", type=FiniteFloat(20, 120), default=72.0, show_default=True)
@click.option(
    "--thermal-timeout",
    type=FiniteFloat(1, 86400),
    default=1800.0,
    show_default=True,
    help="Seconds a thermal pause may last before training stops with a checkpoint.",
)
@click.option(
    "--require-thermal", is_flag=True, help="Refuse to train without a temperature sensor."
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Torch CPU threads per process (default: torch's choice; 1 is fastest on a busy 2-core machine).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Background processes drawing training patches (0: the training process). On a GPU the "
    "sampler sets the pace; on a 2-core CPU leave 0. Part of the experiment: other batches.",
)
def train(**options: object) -> None:
    """Train the multi-task UNet on DATA; write a model bundle, metrics, logs and curves to OUT.

    DATA is checked first (every image header, every label in full): a problem stops with one
    line naming the file, and a labelled case whose label is all background (no pancreas, no
    lesion) is trained on with a warning naming that file. Nothing is written to OUT until every
    check has passed; a run that fails before its first checkpoint leaves OUT as it was.
    """
    from edgepanc.training.config import TrainConfig
    from edgepanc.training.runner import run_training

    patch = _parse_triple(options.pop("patch_size"), int, "--patch-size")  # type: ignore[arg-type]
    spacing = _parse_triple(options.pop("target_spacing"), float, "--target-spacing")  # type: ignore[arg-type]
    features = _features(options.pop("features"), options.pop("depth"))  # type: ignore[arg-type]
    fold = _parse_fold(options.pop("fold"))  # type: ignore[arg-type]
    folds = int(options["folds"])  # type: ignore[arg-type]
    if fold is not None and folds < 2:
        raise click.BadParameter("--fold needs --folds K with K >= 2", param_hint="--fold")
    if isinstance(fold, int) and not 0 <= fold < folds:
        raise click.BadParameter(f"{fold} is not in 0..{folds - 1}", param_hint="--fold")
    if float(options["lesion_fraction"]) + float(options["pancreas_fraction"]) > 1:  # type: ignore[arg-type]
        raise click.BadParameter("--lesion-fraction + --pancreas-fraction must be <= 1")
    data = Path(options.pop("data"))  # type: ignore[arg-type]
    if not data.is_dir():
        raise InputError(data, "data folder does not exist")
    config = TrainConfig(
        data=str(data),
        out=str(options.pop("out")),
        patch_size=patch,  # type: ignore[arg-type]
        target_spacing=spacing,  # type: ignore[arg-type]
        features=features,
        fold=None if fold in (None, "all") else int(fold),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    summary = run_training(config)
    if "best_score" in summary:
        click.echo(
            f"best combined score {summary['best_score']:.4f} at epoch {summary['best_epoch']}: {config.out}"
        )
    else:
        click.echo(f"cross-validation summary written to {Path(config.out) / 'cv_summary.json'}")


def _features(text: str | None, depth: int | None) -> tuple[int, ...] | None:
    if text is None:
        if depth is not None:
            raise click.BadParameter("--depth needs --width", param_hint="--depth")
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: comma-separated channel counts", param_hint="--features"
        ) from None
    if len(values) == 1:
        if depth is None:
            raise click.BadParameter("one width needs --depth", param_hint="--width")
        values = tuple(values[0] * 2**i for i in range(depth))
    elif depth is not None and depth != len(values):
        raise click.BadParameter(
            f"--depth {depth} disagrees with {len(values)} --features", param_hint="--depth"
        )
    if min(values) < 1 or len(values) < 2:
        raise click.BadParameter(
            f"{text!r}: at least two positive channel counts", param_hint="--features"
        )
    return values
