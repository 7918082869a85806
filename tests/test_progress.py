"""Long work is never silent: progress lines where output is not a terminal."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from fashion_sweeps import progress
from fashion_sweeps.data.decode import decode_files
from fashion_sweeps.models.classifier import Classifier, Preprocess
from fashion_sweeps.models.features import pooled_features
from fashion_sweeps.models.timm_backbones import efficientnet_lite0
from fashion_sweeps.progress import duration, stage_progress
from fashion_sweeps.train import train


def test_a_run_writes_batch_lines_with_rate_and_time_left(make_cfg, clothing_root, caplog):
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=16",
        "dataset.batch_size=4",
        "backbone=mlp",
        "trainer.max_epochs=2",
        "trainer.progress_every_s=0",  # every batch, where a real run waits 30 s
        "tracking.log_model=false",
    )
    with caplog.at_level(logging.INFO, logger="fashion_sweeps.trainer"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if " batch " in r.getMessage()]
    assert lines[0].startswith("epoch 1/2 batch 1/")
    assert lines[-1].startswith("epoch 2/2 batch ")
    assert all("images/s" in line and "left" in line for line in lines)
    assert lines[-1].endswith("~0s left")


def test_the_terminal_bar_shows_loss_and_accuracy_by_epoch_from_1(make_cfg, clothing_root, capsys):
    """On a terminal the bar showed `v_num` and no loss or accuracy, and its "Epoch 1" was the
    second epoch."""
    cfg = make_cfg(
        "dataset=clothing", f"dataset.root={clothing_root}", "dataset.image_size=16",
        "backbone=mlp", "trainer.max_epochs=2", "trainer.progress=bar",
        "tracking.log_model=false", "tracking.plots=false",
    )  # fmt: skip
    train(cfg)
    captured = capsys.readouterr()
    bar = captured.err + captured.out
    assert "Epoch 1/2" in bar and "Epoch 2/2" in bar and "Epoch 0" not in bar
    last = bar.rsplit("Epoch 2/2", 1)[1]
    assert all(f"{key}=" in last for key in ("train_loss", "train_acc", "val_loss", "val_acc"))
    assert "v_num" not in bar


def test_frozen_features_report_their_progress(monkeypatch, caplog):
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    backbone = efficientnet_lite0(freeze=True)
    model = Classifier(Preprocess(3, [0.5] * 3, [0.5] * 3), backbone, torch.nn.Identity(), "ab", 32)
    pixels = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="fashion_sweeps.models.features"):
        pooled_features(model, pixels, batch_size=2)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "Frozen features (torch f32): 2/5 images",
        "Frozen features (torch f32): 4/5 images",
        "Frozen features (torch f32): 5/5 images",
    ]


def test_stage_progress_extrapolates_the_median_condition() -> None:
    assert stage_progress(0, 24, ["a/fc/adam/0.1"], []) == "condition 1/24: a/fc/adam/0.1"
    # The first condition computed the features (8 minutes): the others' 10 s is the estimate.
    line = stage_progress(4, 24, ["x", "y"], [480.0, 10.0, 10.0, 10.0])
    assert line == "conditions 5-6/24: x, y (stage ~3m20s left)"
    assert duration(3725) == "1h02m"


def test_decoding_images_reports_its_progress(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    paths = []
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    with caplog.at_level(logging.INFO, logger="fashion_sweeps.data.decode"):
        pixels, _ = decode_files(paths, 4, workers=1)
    assert pixels.shape == (3, 4, 4, 3)
    assert caplog.records[-1].getMessage().startswith("Decoding images: 3/3, ")
