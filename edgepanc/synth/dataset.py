"""Plan and write a synthetic data set in the quiz or nnU-Net raw layout.

The split follows the real data set (train 62/106/84 and validation 9/15/12 cases per subtype,
72 test cases) scaled to the number of labelled cases asked for. The whole data set is written
into a hidden folder beside ``out`` and renamed into place at the end, so a failure leaves
nothing behind and existing data is only replaced when the user asked for it.

Cases can be generated in worker processes (``workers``); each case is seeded by its own spec,
so the data set is byte-identical for any number of workers.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from edgepanc.blas import blas_on_one_thread
from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from edgepanc.synth.marker import mark_phantom
from edgepanc.synth.phantom import SIZES, Phantom, PhantomSpec, generate_phantom
from edgepanc.version import __version__

LAYOUTS = ("quiz", "nnunet")
# Cases per (split, subtype) in the real data set, and its test set size.
REAL_SPLIT = {
    ("train", 0): 62,
    ("train", 1): 106,
    ("train", 2): 84,
    ("validation", 0): 9,
    ("validation", 1): 15,
    ("validation", 2): 12,
}
REAL_TEST = 72
MIN_CASES_FOR_EVERY_GROUP = 12
MIN_CASES_FOR_TEST = 8


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``edgepanc synth``."""

    out: Path
    cases: int = 60
    layout: str = "quiz"
    size: str = "quiz"
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    workers: int = 1


@dataclass(frozen=True)
class PlannedCase:
    """One case of the plan: its name, split, subtype and the spec that generates it."""

    name: str  # quiz_S_NNN for labelled cases, quiz_NNN for test cases
    number: int
    spec: PhantomSpec

    @property
    def split(self) -> str:
        return self.spec.split

    @property
    def subtype(self) -> int:
        return self.spec.subtype


def apportion(total: int, weights: list[int], minimum: int = 0) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders), each at least ``minimum``."""
    quotas = [total * w / sum(weights) for w in weights]
    counts = [max(minimum, math.floor(q)) for q in quotas]
    while sum(counts) < total:
        k = max(range(len(counts)), key=lambda i: quotas[i] - counts[i])
        counts[k] += 1
    while sum(counts) > total:
        k = max(
            (i for i in range(len(counts)) if counts[i] > minimum),
            key=lambda i: counts[i] - quotas[i],
        )
        counts[k] -= 1
    return counts


def count_test_cases(cases: int) -> int:
    """Test cases for ``cases`` labelled ones: the real 72/288 ratio, at least one from 8 up."""
    n = round(cases * REAL_TEST / sum(REAL_SPLIT.values()))
    return max(n, 1) if cases >= MIN_CASES_FOR_TEST else n


def plan_cases(cases: int, seed: int, size: str) -> list[PlannedCase]:
    """Every case to write, numbered 1.. through train, validation and test."""
    groups = list(REAL_SPLIT)
    minimum = 1 if cases >= MIN_CASES_FOR_EVERY_GROUP else 0
    counts = apportion(cases, list(REAL_SPLIT.values()), minimum)
    # Test subtypes follow the labelled proportions; they are recorded only in synth.json.
    per_subtype = [sum(REAL_SPLIT[(s, k)] for s in ("train", "validation")) for k in range(3)]
    test = apportion(count_test_cases(cases), per_subtype)
    plan: list[PlannedCase] = []
    number = 0
    for (split, subtype), n in [
        *zip(groups, counts, strict=True),
        *((("test", k), n) for k, n in enumerate(test)),
    ]:
        for index in range(n):
            number += 1
            name = f"quiz_{number:03d}" if split == "test" else f"quiz_{subtype}_{number:03d}"
            plan.append(PlannedCase(name, number, PhantomSpec(seed, split, subtype, index, size)))
    order = {"train": 0, "validation": 1, "test": 2}
    return sorted(plan, key=lambda c: (order[c.split], c.number))


def case_paths(case: PlannedCase, layout: str) -> tuple[Path, Path | None]:
    """Image and (for labelled cases) mask path of ``case``, relative to the data set root."""
    if layout == "quiz":
        folder = (
            Path("test") if case.split == "test" else Path(case.split) / f"subtype{case.subtype}"
        )
        label = None if case.split == "test" else folder / f"{case.name}.nii.gz"
        return folder / f"{case.name}_0000.nii.gz", label
    if case.split == "test":
        return Path("imagesTs") / f"{case.name}_0000.nii.gz", None
    return Path("imagesTr") / f"{case.name}_0000.nii.gz", Path("labelsTr") / f"{case.name}.nii.gz"


def _write_image(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _write_case(root: Path, case: PlannedCase, phantom: Phantom, layout: str) -> dict:
    image_rel, label_rel = case_paths(case, layout)
    _write_image(mark_phantom(phantom.image_sitk()), root / image_rel)
    if label_rel is not None:
        _write_image(phantom.label_sitk(), root / label_rel)
    return {
        "name": case.name,
        "split": case.split,
        "subtype": case.subtype,
        "image": image_rel.as_posix(),
        "label": label_rel.as_posix() if label_rel else None,
        "shape_zyx": list(phantom.image.shape),
        "spacing_zyx": [round(s, 4) for s in phantom.grid.spacing],
        **phantom.info,
    }


def _generate_and_write(root: Path, case: PlannedCase, layout: str) -> dict:
    """Generate one case and write it under ``root``; returns its record.

    Runs in a worker process when ``workers > 1``: only the small record travels back, never the
    arrays.
    """
    return _write_case(root, case, generate_phantom(case.spec), layout)


def _single_threaded_worker() -> None:
    """Cases already run one per process: BLAS threads (the noise fields' matrix products) would
    only compete for the same cores."""
    blas_on_one_thread()


def _generate_all(root: Path, plan: list[PlannedCase], config: SynthConfig) -> list[dict]:
    """Records of every case of ``plan``, in plan order, generated by ``config.workers`` processes."""
    with tqdm(total=len(plan), desc="synth", unit="case", disable=not config.progress) as bar:
        if config.workers == 1:
            records = []
            for case in plan:
                records.append(_generate_and_write(root, case, config.layout))
                bar.update()
            return records
        pool = ProcessPoolExecutor(
            max_workers=min(config.workers, len(plan)), initializer=_single_threaded_worker
        )
        try:
            futures = [pool.submit(_generate_and_write, root, c, config.layout) for c in plan]
            for future in as_completed(futures):
                future.result()  # a worker's exception stops the run here
                bar.update()
            return [f.result() for f in futures]
        finally:
            # On failure, drop the cases not started yet rather than generate them for nothing;
            # running ones finish before the caller removes the staging folder.
            pool.shutdown(wait=True, cancel_futures=True)


def _write_nnunet_metadata(root: Path, plan: list[PlannedCase]) -> None:
    labelled = [c for c in plan if c.split != "test"]
    dataset = {
        "name": "edgepanc synthetic pancreas phantoms",
        "description": "CT phantoms from `edgepanc synth`: pancreas (1) and one lesion (2) per case",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "pancreas": 1, "lesion": 2},
        "numTraining": len(labelled),
        "file_ending": ".nii.gz",
        # Not an nnU-Net key: keeps the train/validation split of the quiz layout.
        "validation": [c.name for c in labelled if c.split == "validation"],
    }
    write_json_atomic(root / "dataset.json", dataset)
    rows = "".join(f"{c.name}.nii.gz,{c.subtype}\n" for c in labelled)
    write_text_atomic(root / "subtypes.csv", "Names,Subtype\n" + rows)


def check_config(config: SynthConfig) -> None:
    """Refuse bad options and an output folder we must not touch, before any work is done."""
    out = Path(config.out)
    if config.cases < 1:
        raise InputError(out, f"--cases must be at least 1, got {config.cases}")
    if config.workers < 1:
        raise InputError(out, f"--workers must be at least 1, got {config.workers}")
    if config.layout not in LAYOUTS:
        raise InputError(
            out, f"--layout must be one of {', '.join(LAYOUTS)}, got {config.layout!r}"
        )
    if config.size not in SIZES:
        raise InputError(out, f"--size must be one of {', '.join(SIZES)}, got {config.size!r}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not config.overwrite:
        raise InputError(out, "folder is not empty; pass --overwrite to replace it")


def synthesize(config: SynthConfig) -> list[dict]:
    """Generate and write the data set; returns one record per case (also saved as synth.json)."""
    check_config(config)
    out = Path(config.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = plan_cases(config.cases, config.seed, config.size)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        records = _generate_all(staging, plan, config)
        if config.layout == "nnunet":
            _write_nnunet_metadata(staging, plan)
        # "synthetic": what training copies into the bundle (edgepanc.synth.marker)
        manifest = {
            "generator": f"edgepanc {__version__}",
            "synthetic": True,
            **asdict(config),
            "cases": records,
        }
        manifest["out"] = str(out)
        write_json_atomic(staging / "synth.json", manifest)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records


def _replace_folder(staging: Path, out: Path) -> None:
    """Move the finished data set into place; an old folder is removed only after the swap."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
