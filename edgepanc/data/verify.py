"""The integrity pass over a data set, in the spirit of nnU-Net's verify_dataset_integrity.

Images are checked from their headers (plus a cheap completeness check of the file), so the pass
stays fast; masks are read in full because their values must be checked. Every case is checked
before the pass stops, so one run names every broken file (up to :data:`MAX_PROBLEMS`): a single
problem raises :class:`~edgepanc.errors.DatasetError` naming its file, several raise one
``DatasetError`` on the data folder that lists them on one line. What is suspicious but usable
(float labels rounded, a label that is all background) comes back in
:attr:`DatasetReport.warnings`, one line per kind however many files share it. NaN voxels in
images are not looked for here (that needs the full read); :func:`edgepanc.io.volume.read_image`
finds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from edgepanc.data.cases import (
    MAX_PROBLEMS,
    SPLITS,
    SUBTYPES,
    Case,
    discover_cases,
    raise_on_duplicates,
    raise_problems,
)
from edgepanc.errors import DatasetError, InputError
from edgepanc.io.volume import (
    ImageInfo,
    check_label_values,
    image_info,
    inspect_image,
    read_image,
)

T = TypeVar("T")

GEOMETRY_TOLERANCE = 1e-4  # relative; scanners and converters round headers differently
ROUNDED = "rounded"
ALL_BACKGROUND = "all background"
_FOLDED = {
    ROUNDED: "masks: labels within 1e-3 of an integer were rounded",
    ALL_BACKGROUND: "labels are all background (no pancreas, no lesion voxel) and are trained "
    "on as they are",
}


@dataclass(frozen=True)
class CaseWarning:
    """Something suspicious but usable about one file: its kind (for folding) and its line.

    Example: ``CaseWarning(ROUNDED, Path("a.nii.gz"), "a.nii.gz: label values rounded")``.
    """

    kind: str
    path: Path
    text: str


def fold_warnings(warnings: Sequence[CaseWarning]) -> list[str]:
    """One line per kind: the warning itself when one file has it, else a count and examples.

    Example::

        >>> fold_warnings([CaseWarning(ROUNDED, Path(f"m{i}.nii.gz"), "...") for i in range(3)])
        ['3 masks: labels within 1e-3 of an integer were rounded (m0.nii.gz, m1.nii.gz, m2.nii.gz)']
    """
    lines = []
    for kind in dict.fromkeys(w.kind for w in warnings):
        group = [w for w in warnings if w.kind == kind]
        if len(group) == 1:
            lines.append(group[0].text)
            continue
        names = ", ".join(str(w.path) for w in group[:3]) + (", ..." if len(group) > 3 else "")
        lines.append(f"{len(group)} {_FOLDED[kind]} ({names})")
    return lines


@dataclass
class DatasetReport:
    """What a verified data set holds: cases per split and per subtype, and the warnings."""

    root: Path | None
    cases_per_split: dict[str, int]
    subtypes_per_split: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_cases(self) -> int:
        return sum(self.cases_per_split.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root) if self.root else None,
            "cases_per_split": dict(self.cases_per_split),
            "subtypes_per_split": {k: dict(v) for k, v in self.subtypes_per_split.items()},
            "warnings": list(self.warnings),
        }

    def table(self) -> str:
        """Cases per split and subtype as an aligned table, one row per split.

        Example::

            >>> print(report.table())  # doctest: +SKIP
            split       subtype0  subtype1  subtype2  unknown  total
            train             62       106        84        0    252
        """
        columns = ["0", "1", "2"] + (
            ["unknown"] if any("unknown" in v for v in self.subtypes_per_split.values()) else []
        )
        header = ["split"] + [f"subtype{c}" if c.isdigit() else c for c in columns] + ["total"]
        rows = [
            [split]
            + [str(self.subtypes_per_split[split].get(c, 0)) for c in columns]
            + [str(count)]
            for split, count in self.cases_per_split.items()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
            for row in [header, *rows]
        )

    def summary(self) -> str:
        """One line per split, e.g. ``train: 252 cases (subtype0 62, subtype1 106, ...)``."""
        lines = []
        for split, count in self.cases_per_split.items():
            per = ", ".join(
                f"subtype{k} {n}" if k.isdigit() else f"{k} {n}"
                for k, n in self.subtypes_per_split[split].items()
            )
            lines.append(f"{split}: {count} cases ({per})" if per else f"{split}: {count} cases")
        return "\n".join(lines)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def geometry_mismatch(image: ImageInfo, mask: ImageInfo) -> str | None:
    """Describe the first geometric property in which ``mask`` differs from ``image``, or None."""
    if image.size != mask.size:
        return f"mask size {mask.size} differs from image size {image.size} ({image.path.name})"
    for name in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(image, name), dtype=float)
        b = np.asarray(getattr(mask, name), dtype=float)
        scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
        if (np.abs(a - b) > GEOMETRY_TOLERANCE * scale).any():
            return f"mask {name} {_fmt(b)} differs from image {name} {_fmt(a)} ({image.path.name})"
    return None


def verify_case(case: Case, check_geometry: bool = True) -> list[CaseWarning]:
    """Check one case; return its warnings, raise DatasetError on its first problem.

    Example: ``verify_case(discover_cases("data")[0])`` -> ``[]``.
    """
    if case.subtype is not None and case.subtype not in SUBTYPES:
        raise DatasetError(case.image, f"subtype {case.subtype} of {case.case_id} is outside 0..2")
    image = _as_dataset_error(inspect_image, case.image)
    if case.label is None:
        return []
    mask_img = _as_dataset_error(read_image, case.label)
    values, warning = _as_dataset_error(
        check_label_values, sitk.GetArrayViewFromImage(mask_img), case.label
    )
    if check_geometry:
        problem = geometry_mismatch(image, image_info(case.label, mask_img))
        if problem:
            raise DatasetError(case.label, problem)
    warnings = [CaseWarning(ROUNDED, case.label, warning)] if warning else []
    if not values.any():
        # Allowed (a scan without the organ is a valid negative), but far more often a label
        # saved empty or paired with the wrong scan, which would teach the network to miss it.
        warnings.append(
            CaseWarning(
                ALL_BACKGROUND,
                case.label,
                f"{case.label}: label is all background (no pancreas, no lesion voxel); "
                "the case is trained on as it is",
            )
        )
    return warnings


def _as_dataset_error(func: Callable[..., T], *args: Any) -> T:
    # The volume readers raise InputError; within a data set the same problem is a DatasetError.
    try:
        return func(*args)
    except DatasetError:
        raise
    except InputError as exc:
        raise DatasetError(exc.path, exc.problem) from None


def verify_dataset(
    root_or_cases: str | Path | Iterable[Case], check_geometry: bool = True, progress: bool = False
) -> DatasetReport:
    """Verify every case of a data set (a folder or a list of cases) and report what it holds.

    Every case is checked before a problem stops the pass (see the module docstring).

    Example: ``print(verify_dataset("data").table())``.
    """
    if isinstance(root_or_cases, (str, Path)):
        root: Path | None = Path(root_or_cases)
        cases = discover_cases(root)
    else:
        cases = list(root_or_cases)
        root = None
    if not cases:
        raise DatasetError(root or Path("<cases>"), "data set is empty: no cases found")
    raise_on_duplicates(cases)
    warnings: list[CaseWarning] = []
    problems: list[DatasetError] = []
    for case in tqdm(cases, desc="verifying", unit="case", disable=not progress):
        try:
            warnings += verify_case(case, check_geometry)
        except DatasetError as exc:
            problems.append(exc)
            if len(problems) >= MAX_PROBLEMS:
                break
    if problems:  # every problem in one line
        raise_problems(problems, root, len(cases), stopped=len(problems) >= MAX_PROBLEMS)
    return DatasetReport(root, *_counts(cases), warnings=fold_warnings(warnings))


def _counts(cases: Sequence[Case]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    per_split = Counter(case.split for case in cases)
    cases_per_split = {split: per_split[split] for split in SPLITS if per_split[split]}
    subtypes: dict[str, dict[str, int]] = {}
    for split in cases_per_split:
        counter = Counter(
            "unknown" if c.subtype is None else str(c.subtype) for c in cases if c.split == split
        )
        subtypes[split] = dict(sorted(counter.items()))
    return cases_per_split, subtypes
