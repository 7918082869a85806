"""Label filters, minimum class counts, the label map and seeded stratified splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fashion_sweeps.data.sources import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def label_filter(
    labels: Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_count: int = 1,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which items to keep, and per dropped class why (as counts of items).

    `include` keeps only the named labels, `exclude` drops the named ones, and classes with
    fewer than `min_count` items are dropped.
    """
    labels = np.asarray(labels, dtype=object)
    known = set(labels.tolist())
    for name, wanted in (("include", include), ("exclude", exclude)):
        unknown = sorted(set(wanted or []) - known)
        if unknown and name == "include":
            raise DataError(
                f"dataset.include names labels the data does not have: {unknown}. "
                f"Labels present: {sorted(known)}."
            )
        if unknown:
            log.warning("dataset.exclude names labels the data does not have: %s", unknown)
    keep = np.ones(len(labels), dtype=bool)
    if include:
        keep &= np.isin(labels, list(include))
    if exclude:
        keep &= ~np.isin(labels, list(exclude))
    dropped = {"excluded_label": int((~keep).sum())}
    counts = Counter(labels[keep].tolist())
    rare = sorted(label for label, n in counts.items() if n < min_count)
    if rare:
        log.info("Dropping %d classes with fewer than %d images: %s", len(rare), min_count, rare)
        rare_mask = np.isin(labels, rare)
        dropped["rare_class"] = int((keep & rare_mask).sum())
        keep &= ~rare_mask
    if not keep.any():
        raise DataError(
            "No images are left after the label filters "
            f"(include={list(include or [])}, exclude={list(exclude or [])}, "
            f"min_count={min_count}). Loosen them."
        )
    return keep, {k: v for k, v in dropped.items() if v}


def label_map(labels: Sequence[str]) -> list[str]:
    """Class names in index order: sorted, so the same data always gives the same indices."""
    return sorted(set(labels))


def stratified_split(
    labels: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    official: Sequence[str] | None = None,
) -> np.ndarray:
    """A split name per item. Official splits are kept; items without one ("train" of a data set
    with no validation split, or everything when there is no official split) are divided per
    class, so every split keeps the class proportions.

    A class too small to reach every split keeps its images in train, with a warning, rather
    than failing the run.
    """
    labels = np.asarray(labels, dtype=object)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
            "[0, 1) and sum to less than 1."
        )
    out = np.asarray(official if official is not None else ["train"] * len(labels), dtype=object)
    has_val, has_test = (out == "val").any(), (out == "test").any()
    fractions = {
        "val": 0.0 if has_val else val_fraction,
        "test": 0.0 if has_test else test_fraction,
    }
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(out == "train")
    too_small = []
    for label in label_map(labels[pool].tolist()):
        members = pool[labels[pool] == label]
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = round(n * fractions["test"])
        n_val = round(n * fractions["val"])
        if fractions["test"] and n_test == 0 and n >= 3:
            n_test = 1
        if fractions["val"] and n_val == 0 and n >= 3:
            n_val = 1
        if n - n_test - n_val < 1 or (n < 3 and (fractions["test"] or fractions["val"])):
            too_small.append(f"{label} ({n})")
            continue
        out[members[:n_test]] = "test"
        out[members[n_test : n_test + n_val]] = "val"
    if too_small:
        log.warning(
            "Classes too small to appear in every split stay in train only (their val/test "
            "metrics are undefined): %s",
            ", ".join(too_small),
        )
    return out


def class_counts(labels: Sequence[str], split: np.ndarray) -> dict[str, dict[str, int]]:
    """Per split, the number of items of each class (sorted by class name)."""
    labels = np.asarray(labels, dtype=object)
    return {name: dict(sorted(Counter(labels[split == name].tolist()).items())) for name in SPLITS}
