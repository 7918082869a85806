"""Label filters, minimum class counts, the label map and seeded stratified splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from fashion_sweeps.data.sources import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def label_filter(
    labels: Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_count: int = 1,
    class_ranks: Sequence[int | None] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which items to keep, and per dropped class why (as counts of items).

    `include` keeps only the named labels, `exclude` drops the named ones, and classes with
    fewer than `min_count` items are dropped. Of the classes left, `class_ranks=[start, end]`
    keeps those whose frequency rank (`frequency_ranked`) is in [start, end); `end` None: to
    the last.
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
    if class_ranks is not None:
        ranked = frequency_ranked(Counter(labels[keep].tolist()))
        start, end = rank_range(class_ranks, len(ranked))
        chosen = ranked[start:end]
        log.info(
            "Keeping the %d classes of frequency ranks [%d, %d) of %d: %s",
            len(chosen),
            start,
            end,
            len(ranked),
            chosen,
        )
        outside = keep & ~np.isin(labels, chosen)
        dropped["class_rank"] = int(outside.sum())
        keep &= ~outside
    return keep, {k: v for k, v in dropped.items() if v}


def frequency_ranked(counts: Mapping[str, int]) -> list[str]:
    """Class names by frequency rank: the most frequent first, ties in name order (so the ranks
    never depend on the order of the rows)."""
    return sorted(counts, key=lambda name: (-counts[name], name))


def rank_range(class_ranks: Sequence[int | None], n_classes: int) -> tuple[int, int]:
    """`dataset.class_ranks` = [start, end] as the half-open range [start, end) of the
    `n_classes` frequency ranks (start None: 0; end None: `n_classes`); a clear error when no
    such range exists."""
    is_list = isinstance(class_ranks, Sequence) and not isinstance(class_ranks, str)
    values = list(class_ranks) if is_list else None
    valid = values is not None and len(values) == 2
    valid = valid and all(
        v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values
    )
    if not valid:
        raise DataError(
            f"dataset.class_ranks={class_ranks!r} is not a range of frequency ranks: give "
            "[start, end] with whole numbers (0 = the most frequent class; end excluded, null for "
            "all the rest), e.g. dataset.class_ranks=[0,20] for the 20 most frequent classes and "
            "dataset.class_ranks=[20,null] for the others."
        )
    start = 0 if values[0] is None else values[0]
    end = n_classes if values[1] is None else values[1]
    if start < 0 or (values[1] is not None and end <= start):
        problem = "selects no class: start must be 0 or more and end greater than start"
    elif start >= n_classes:
        problem = f"starts at rank {start}, beyond the last class"
    elif end > n_classes:
        problem = f"ends at rank {end}, beyond the last class"
    else:
        return start, end
    shown = ", ".join("null" if v is None else str(v) for v in values)
    raise DataError(
        f"dataset.class_ranks=[{shown}] {problem}. {n_classes} classes are left after "
        f"dataset.include/exclude/min_count, ranked 0 to {n_classes - 1} (the most frequent "
        f"first, ties by name; end excluded). Choose 0 <= start < end <= {n_classes}, or end null for every class from start on; "
        "if more classes were expected, loosen the other filters (a lower dataset.min_count, "
        "another dataset.reader.label_column)."
    )


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
