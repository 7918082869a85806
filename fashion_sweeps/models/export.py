"""`fashion-sweeps export-backbone RUN_DIR`: a run's trained backbone as the state-dict file
`backbone.weights_path` loads, so that a later run starts from it (e.g. the second stage of the
product_imbalance recipe, on other classes: the head is new, the backbone carries over).

The weights come from the run's best checkpoint (`checkpoints/best-*.ckpt`), the architecture
from the run's record (`mlflow_run.json`). torchvision backbones are written under torchvision's
names (what `backbone.weights_path` expects of them); their classification layer, which our
backbones drop, keeps a fresh initialisation. Scratch backbones are written as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fashion_sweeps import run_folder
from fashion_sweeps.errors import UserError
from fashion_sweeps.run_folder import BACKBONE_PREFIX, WITHOUT_BACKBONE

if TYPE_CHECKING:  # torch loads when a backbone is read: `--help` answers at once
    import torch


class ExportError(UserError, RuntimeError):
    """A run folder whose backbone cannot be exported; the message says why."""


def backbone_name(folder: Path) -> str:
    """The backbone's builder name (`resnet50`, `simple_cnn`, ...) from the run's record."""
    record = run_folder.record(folder)
    if not record.is_file():
        raise ExportError(
            f"{str(folder)!r} is not a run's output folder (no {record.name}): give the folder "
            "a `fashion-sweeps train` run wrote, e.g. multirun/runs/<date>/<time>."
        )
    target = json.loads(record.read_text()).get("identity", {}).get("backbone._target_")
    if not target:
        raise ExportError(f"{record} does not name the run's backbone (backbone._target_).")
    return str(target).rsplit(".", 1)[-1]


def best_checkpoint(folder: Path) -> Path:
    """The run's best checkpoint (the newest, if a resumed run left several)."""
    found = run_folder.best_checkpoints(folder)
    if not found:
        raise ExportError(
            f"No best checkpoint in {run_folder.checkpoints(folder)}: the run has not finished an "
            "epoch."
        )
    return found[-1]


def backbone_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors in a Lightning checkpoint, under `Backbone.state_dict()`'s keys."""
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if saved.get(WITHOUT_BACKBONE):
        raise ExportError(
            f"{checkpoint} is of a run on cached features: its backbone stayed frozen as loaded "
            "(its pretrained weights, backbone.weights_path), so the checkpoint leaves it out. "
            "Export the backbone of a run that fine-tuned it (backbone.freeze=false or N)."
        )
    state = saved["state_dict"]
    backbone = {
        k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)
    }
    if not backbone:
        raise ExportError(f"{checkpoint} holds no backbone ({BACKBONE_PREFIX}* tensors).")
    return backbone


def as_torchvision(name: str, backbone: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`backbone` under torchvision's names for model `name`.

    Our torchvision backbones keep the model's feature layers in their order and drop the
    classification layer, so their tensors are the leading tensors of torchvision's state dict,
    in the same order; each pair is checked (kind of tensor and shape)."""
    import torchvision

    reference = torchvision.models.get_model(name, weights=None).state_dict()
    names = list(reference)
    if len(backbone) > len(names):
        raise ExportError(f"The checkpoint's backbone has more tensors than torchvision's {name}.")
    for ours, theirs in zip(backbone, names, strict=False):
        same_kind = ours.rsplit(".", 1)[-1] == theirs.rsplit(".", 1)[-1]
        if not same_kind or backbone[ours].shape != reference[theirs].shape:
            raise ExportError(
                f"The checkpoint's backbone does not match torchvision's {name}: {ours} "
                f"{tuple(backbone[ours].shape)} faces {theirs} {tuple(reference[theirs].shape)}."
            )
        reference[theirs] = backbone[ours]
    return reference


def export_backbone(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the backbone of a run (its output folder, or a checkpoint in it: default the best)
    to `out` (default `<folder>/backbone.pth`); returns the file."""
    import torch
    import torchvision

    given = Path(run).expanduser()
    folder = run_folder.folder_of(given)
    name = backbone_name(folder)
    state = backbone_state(given if given.suffix == ".ckpt" else best_checkpoint(folder))
    if name in torchvision.models.list_models():
        state = as_torchvision(name, state)
    path = Path(out).expanduser() if out else run_folder.exported_backbone(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps export-backbone",
        description="Write a run's trained backbone as a state-dict file for "
        "`backbone.weights_path=` (the same backbone option, any classes and head).",
    )
    parser.add_argument(
        "run", help="the run's output folder (multirun/runs/<date>/<time>) or a checkpoint in it"
    )
    parser.add_argument("--out", help="the file to write (default: <run>/backbone.pth)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = export_backbone(args.run, args.out)
    except ExportError as err:
        print(f"fashion-sweeps export-backbone: {err}", file=sys.stderr)
        return 2
    print(f"Backbone of {run_folder.folder_of(args.run)} written to {path}: use it with")
    print(f"  backbone.weights_path={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
