"""A run's data as MLflow dataset inputs (`mlflow.data`): one per split, with the folder it was
read from, its size and a digest, so the runs table's Dataset column tells which data a run saw.

The digest is the prepared data's fingerprint (data/cache.py: every file's path, size and mtime
plus the preprocessing, or the pixels' bytes) combined with the split's members: runs on the same
images and split share it; other files, another image size or another split seed change it.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import mlflow.data
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fashion_sweeps.data.datamodule import PreparedData

SPLITS = ("train", "val", "test")  # as data/splits.py names them
DIGEST_CHARS = 32  # MLflow stores at most 36


def split_digest(prepared: PreparedData, split: str) -> str:
    digest = hashlib.sha256(f"{prepared.fingerprint}\0{split}\0".encode())
    digest.update(np.ascontiguousarray(prepared.indices(split), dtype=np.int64).tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def split_inputs(prepared: PreparedData, name: str, root: str | Path) -> list[DatasetInput]:
    """One dataset input per split present (its context tag the split's name), its source the
    data folder `root`."""
    source = str(Path(root).expanduser().resolve())
    inputs = []
    for split in SPLITS:
        members = prepared.indices(split)
        if not len(members):
            continue
        # A zero-copy view with the split's shape: MLflow reads only its shape and dtype (the
        # profile and schema); copying a split of large images would cost gigabytes.
        features = np.broadcast_to(prepared.pixels[:1], (len(members), *prepared.pixels.shape[1:]))
        with warnings.catch_warnings():
            # MLflow registers two equivalent sources for a local path and says so each time.
            warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
            dataset = mlflow.data.from_numpy(
                features,
                source=source,
                targets=prepared.targets[members],
                name=f"{name}-{split}",
                digest=split_digest(prepared, split),
            )
        inputs.append(
            DatasetInput(Dataset(**dataset.to_dict()), [InputTag(MLFLOW_DATASET_CONTEXT, split)])
        )
    return inputs
