"""Readers for the four on-disk formats. Each returns one `Source`: the items and what was skipped.

Readers only list items; images are decoded once, later, by `fashion_sweeps.data.decode`.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashion_sweeps.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class DataError(UserError, RuntimeError):
    """A data set cannot be read as configured. The message says what is wrong and what to do."""


@dataclass
class Source:
    """Items of one data set: either image files (`paths`) or decoded pixels (`pixels`).

    `splits` holds the official split of each item ("train"/"val"/"test") where the data set
    has one, else None. `skipped` lists (item, reason) pairs that were left out.
    """

    labels: list[str]
    paths: list[Path] | None = None
    pixels: np.ndarray | None = None  # (N, H, W, C) uint8
    splits: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))

    def select(self, keep: np.ndarray) -> Source:
        """The items where `keep` is True (skips carried over)."""
        idx = np.flatnonzero(keep)
        return Source(
            labels=[self.labels[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            pixels=None if self.pixels is None else self.pixels[idx],
            splits=None if self.splits is None else [self.splits[i] for i in idx],
            skipped=list(self.skipped),
        )


def _require_dir(root: Path, what: str, how: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"The {what} data folder {str(root.resolve())!r} {problem}. {how} "
            f"Point the run at it with `dataset.root=/path/to/{what}` (`make sweep ROOT=...`); "
            "without data, `make demo` runs offline on the bundled sample."
        )
    return root


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"{str(path.resolve())!r} is missing: a {what} folder must contain "
            f"{path.name!r}. Check `dataset.root`."
        )
    return path


# --- Fashion-MNIST: the four IDX gzip files ----------------------------------------------------

FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a uint8 array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as err:  # a download that stopped, a damaged gzip
        raise DataError(
            f"{str(path)!r} is truncated or damaged ({err}). Download it again: delete it and "
            "rerun (Fashion-MNIST is fetched when missing unless dataset.reader.download=false)."
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(path)!r} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(
            f"{str(path)!r} is truncated or damaged: its header promises {expected} bytes, "
            f"the file holds {len(data) - offset}. Download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_fmnist_dir(root: Path) -> Path | None:
    # torchvision downloads into root/FashionMNIST/raw; a plain copy keeps the files in root.
    for candidate in (root, root / "FashionMNIST" / "raw"):
        if all((candidate / f).is_file() for pair in FMNIST_FILES.values() for f in pair):
            return candidate
    return None


def read_fashion_mnist(root: str | Path, download: bool = True) -> Source:
    """Fashion-MNIST from its four IDX `.gz` files; downloaded through torchvision when missing."""
    root = Path(root).expanduser()
    folder = _find_fmnist_dir(root)
    if folder is None and download:
        folder = _download_fashion_mnist(root)
    if folder is None:
        raise DataError(
            f"Fashion-MNIST is not in {str(root.resolve())!r} (expected the four IDX files "
            f"{', '.join(f for pair in FMNIST_FILES.values() for f in pair)}) and download is off. "
            "Either point `dataset.root=` at a folder holding them, or run offline on the "
            "bundled sample with `dataset=clothing_sample`."
        )
    labels, pixels, splits = [], [], []
    for split, (images_file, labels_file) in FMNIST_FILES.items():
        images = read_idx(folder / images_file)
        targets = read_idx(folder / labels_file)
        if len(images) != len(targets):
            raise DataError(f"{folder}: {images_file} and {labels_file} differ in length.")
        if targets.max(initial=0) >= len(FMNIST_CLASSES):
            raise DataError(f"{folder / labels_file}: label {targets.max()} is not 0..9.")
        pixels.append(images)
        labels += [FMNIST_CLASSES[t] for t in targets]
        splits += [split] * len(targets)
    return Source(labels=labels, pixels=np.concatenate(pixels)[..., None], splits=splits)


def _download_fashion_mnist(root: Path) -> Path | None:
    from torchvision.datasets import FashionMNIST

    log.info("Fashion-MNIST not found in %s: downloading it through torchvision", root)
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTP)
        raise DataError(
            f"Fashion-MNIST is not in {str(root.resolve())!r} and downloading it failed ({err}). "
            "Without network, either copy the four IDX .gz files there and point "
            "`dataset.root=` at them, or run on the bundled offline sample with "
            "`dataset=clothing_sample`."
        ) from err
    return _find_fmnist_dir(root)


# --- The CSV-indexed formats: <name>.csv + images/<id>.jpg -------------------------------------


def read_csv_text(path: Path) -> str:
    """A CSV file's text: UTF-8, with or without the byte-order mark spreadsheet programs write."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path.name} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}): {path} must be saved as UTF-8, e.g. `iconv -f latin1 -t utf-8 "
            f"{path.name} > fixed.csv` and replace it with fixed.csv."
        ) from None


def match_rows(
    rows: Iterable[tuple[str, str]], images: dict[str, Path], csv_path: Path
) -> tuple[list[str], list[Path], list[tuple[str, str]], set[str]]:
    """(image id, label) rows -> labels and paths of the usable ones, the skipped (id, reason)
    pairs and the ids used. A repeated id with the same label is skipped as `duplicate` (one
    photo must not count twice); with another label it is an error, since its class is unknown."""
    labels, paths, skipped = [], [], []
    first_label: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    for image_id, label in rows:
        if not label:
            skipped.append((image_id, "no_label"))
        elif image_id in first_label:
            if label == first_label[image_id]:
                skipped.append((image_id, "duplicate"))
            else:
                seen = conflicts.setdefault(image_id, [first_label[image_id]])
                seen += [] if label in seen else [label]
        else:
            first_label[image_id] = label
            if image_id in images:
                labels.append(label)
                paths.append(images[image_id])
            else:
                skipped.append((image_id, "missing_image"))
    if conflicts:
        shown = "; ".join(f"{i} ({', '.join(ls)})" for i, ls in list(conflicts.items())[:10])
        more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        raise DataError(
            f"{csv_path} gives {len(conflicts)} image(s) more than one label: {shown}{more}. "
            "Keep one row per image (or the same label on each) so that its class is known."
        )
    used = {image_id for image_id in first_label if image_id in images}
    return labels, paths, skipped, used


# --- Clothing: images.csv + images/<id>.jpg ----------------------------------------------------


def _index_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem (the id a CSV names)."""
    return {
        p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def read_clothing(root: str | Path) -> Source:
    """The clothing data set: `images.csv` (image,sender_id,label,kids) and `images/<id>.jpg`."""
    root = _require_dir(Path(root), "clothing", "Get it from the clothing-dataset repository.")
    csv_path = _require_file(root / "images.csv", "clothing")
    images = _index_images(_require_dir(root / "images", "clothing images", ""))
    reader = csv.DictReader(io.StringIO(read_csv_text(csv_path), newline=""))
    missing_cols = {"image", "label"} - set(reader.fieldnames or [])
    if missing_cols:
        raise DataError(f"{csv_path} lacks the column(s) {sorted(missing_cols)}.")
    rows = (((r["image"] or "").strip(), (r["label"] or "").strip()) for r in reader)
    labels, paths, skipped, used = match_rows(rows, images, csv_path)
    # Photos without a row are not an error (the real data set has 358), but users should know.
    skipped += [(p.name, "no_row") for i, p in images.items() if i not in used]
    return Source(labels=labels, paths=paths, skipped=skipped)


# --- Kaggle Fashion Product Images: styles.csv + images/<id>.jpg -------------------------------

STYLES_COLUMNS = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]


def read_styles_csv(path: Path) -> list[dict[str, str]]:
    """Rows of `styles.csv`. The last column, productDisplayName, may hold unquoted commas:
    every field past the ninth belongs to it."""
    rows = []
    reader = csv.reader(io.StringIO(read_csv_text(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty.")
    header = [h.strip() for h in header]
    n = len(header)
    for fields in reader:
        if not fields:
            continue
        if len(fields) > n:
            fields = [*fields[: n - 1], ",".join(fields[n - 1 :])]
        rows.append(dict(zip(header, fields, strict=False)))
    return rows


def read_fashion_product(root: str | Path, label_column: str = "articleType") -> Source:
    """Kaggle Fashion Product Images: `styles.csv` + `images/<id>.jpg`, labelled by one column."""
    root = _require_dir(
        Path(root), "fashion_product", "Download 'Fashion Product Images' from Kaggle."
    )
    rows = read_styles_csv(_require_file(root / "styles.csv", "fashion_product"))
    if rows and label_column not in rows[0]:
        raise DataError(
            f"styles.csv has no column {label_column!r}; choose `dataset.reader.label_column` "
            f"from {[c for c in rows[0] if c != 'id']}."
        )
    images = _index_images(_require_dir(root / "images", "fashion_product images", ""))
    pairs = ((r.get("id", "").strip(), (r.get(label_column) or "").strip()) for r in rows)
    labels, paths, skipped, _ = match_rows(pairs, images, root / "styles.csv")
    return Source(labels=labels, paths=paths, skipped=skipped)


# --- A folder per class, optionally under train/validation/test --------------------------------


def read_image_folder(root: str | Path) -> Source:
    """`root/<class>/*` or `root/{train,validation,test}/<class>/*` (val/valid accepted)."""
    root = _require_dir(Path(root), "image_folder", "Make a folder with one sub-folder per class.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_NAMES]
    labels, paths, splits = [], [], []
    if split_dirs:
        if "train" not in {SPLIT_NAMES[p.name.lower()] for p in split_dirs}:
            raise DataError(f"{root} has split folders but no `train/` folder.")
        for split_dir in split_dirs:
            for label, files in _class_folders(split_dir):
                labels += [label] * len(files)
                paths += files
                splits += [SPLIT_NAMES[split_dir.name.lower()]] * len(files)
    else:
        for label, files in _class_folders(root):
            labels += [label] * len(files)
            paths += files
    if not paths:
        raise DataError(
            f"{root} holds no images: expected `{root}/<class>/<image>` or "
            f"`{root}/train/<class>/<image>` (suffixes {sorted(IMAGE_SUFFIXES)})."
        )
    return Source(labels=labels, paths=paths, splits=splits or None)


def _class_folders(folder: Path) -> list[tuple[str, list[Path]]]:
    out = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            log.warning("Class folder %s holds no images: class left out", class_dir)
            continue
        out.append((class_dir.name, files))
    return out
