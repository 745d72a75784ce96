"""The data concern: the embedded synthetic dataset, and resolving and checking datasets."""

from dat_exp.data.resolve import (
    DATA_CHOICES,
    DatasetError,
    DatasetInfo,
    check_dataset,
    resolve_dataset,
)
from dat_exp.data.synthetic import CLASS_NAMES, SyntheticSpec, generate

__all__ = [
    "CLASS_NAMES",
    "DATA_CHOICES",
    "DatasetError",
    "DatasetInfo",
    "SyntheticSpec",
    "check_dataset",
    "generate",
    "resolve_dataset",
]
