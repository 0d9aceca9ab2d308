"""Data sets on disk: finding cases (quiz and nnU-Net raw layouts) and verifying them."""

from edgepanc.data.cases import SPLITS, SUBTYPES, Case, detect_layout, discover_cases, split_cases
from edgepanc.data.verify import DatasetReport, verify_case, verify_dataset

__all__ = [
    "SPLITS",
    "SUBTYPES",
    "Case",
    "DatasetReport",
    "detect_layout",
    "discover_cases",
    "split_cases",
    "verify_case",
    "verify_dataset",
]
