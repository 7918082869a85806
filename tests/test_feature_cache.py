"""The frozen-backbone feature cache: the head trained on stored features reaches the same metrics
as the uncached frozen path, BatchNorm stays in eval in both, and the cache is used only where it
changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from fashion_sweeps.data.datamodule import FashionDataModule
from fashion_sweeps.inference.engines import Engine
from fashion_sweeps.models.classifier import Classifier, Preprocess, classifier_for
from fashion_sweeps.models.features import (
    TORCH_F32,
    FeatureCacheError,
    apply_feature_cache,
    features_key,
    pooled_features,
)
from fashion_sweeps.models.timm_backbones import efficientnet_lite0
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train
from fashion_sweeps.trainer.clock import TrialClock

# fmnist_cnn with BatchNorm, fully frozen; the batchnorm head has dropout, so the global RNG
# must be consumed the same way on both paths for the results to match.
FROZEN = [
    "backbone=fmnist_cnn",
    "backbone.widths=[4,8,8]",
    "backbone.dense=16",
    "backbone.batchnorm=true",
    "backbone.freeze=true",
    "head=batchnorm",
    "optimizer.lr=0.01",
    "trainer.max_epochs=2",
    "dataset.batch_size=16",
]
COMPARED = ["best_val_loss", "test_loss", "test_acc", "test_f1_weighted", "train_loss", "val_acc"]


class BatchNormProbe(pl.Callback):
    """Records whether any BatchNorm of the backbone trains, or its statistics move, during fit."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.norms = [
            m for m in pl_module.model.backbone.modules() if isinstance(m, nn.BatchNorm2d)
        ]
        self.before = [m.running_mean.clone() for m in self.norms]
        self.training_seen = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.training_seen |= any(m.training for m in self.norms)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.moved = any(
            not torch.equal(b, m.running_mean) for b, m in zip(self.before, self.norms, strict=True)
        )


def case_cfg(make_cfg, *overrides: str):
    """A config whose run gets its own output folder (a folder holds one run: job_run.py)."""
    cfg = make_cfg(*overrides)
    case = next(o.split("=", 1)[1] for o in overrides if "case=" in o)
    cfg.output_dir = f"{cfg.output_dir}/{case}"
    return cfg


def run_metrics(cfg, condition_tag: str) -> tuple[dict[str, float], dict[str, str]]:
    client = MlflowClient(tracking_uri(cfg.tracking))
    [experiment] = client.search_experiments(filter_string="name = 'fashion_mnist'")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    run = next(r for r in runs if r.data.tags.get("case") == condition_tag)
    return run.data.metrics, run.data.tags


def test_cached_features_train_the_same_head(make_cfg, fmnist_root: Path) -> None:
    # PyTorch computes the features: the same numbers as the uncached path's forward passes.
    base = ["dataset=fashion_mnist", f"dataset.root={fmnist_root}", *FROZEN, "inference=torch"]
    results = {}
    for case, features in (("images", "false"), ("miss", "true"), ("hit", "auto")):
        cfg = case_cfg(make_cfg, *base, f"cache.features={features}", f"+tracking.tags.case={case}")
        probe, clock = BatchNormProbe(), TrialClock()
        train(cfg, callbacks=[probe, clock])
        assert probe.norms and not probe.training_seen and not probe.moved, case
        results[case] = run_metrics(cfg, case)
        # The per-trial timings `make bench` reads: every training image of both epochs counted.
        metrics = results[case][0]
        assert clock.images == metrics["train_images_seen"] > 0
        # Timings under time/ (MLflow charts that prefix apart), and logged after what users
        # compare: MLflow's compare view opened on the first metric logged, image_cache_s.
        assert not [k for k in metrics if k.endswith("_s") and not k.startswith("time/")]
        first = next(iter(metrics))  # the store's order: the order of logging
        assert not first.startswith(("time/", "skipped_", "system/")), list(metrics)[:5]
        startup, wall = metrics["time/startup_s"], metrics["time/wall_time_s"]
        assert 0 < startup < wall and metrics["time/teardown_s"] > 0
        assert metrics["time/train_images_per_s"] > 0

    assert [results[c][1]["feature_cache"] for c in results] == ["off", "miss", "hit"]
    images = results["images"][0]
    for case in ("miss", "hit"):
        metrics = results[case][0]
        for name in COMPARED:
            assert metrics[name] == pytest.approx(images[name], rel=1e-4, abs=1e-5), (case, name)
    assert results["hit"][0]["time/feature_cache_s"] < results["miss"][0]["time/feature_cache_s"]

    # Another condition of the same backbone (head, optimizer) reuses the stored features.
    cfg = case_cfg(make_cfg, *base, "head=fc", "optimizer=sgd", "+tracking.tags.case=other")
    train(cfg)
    assert run_metrics(cfg, "other")[1]["feature_cache"] == "hit"


def test_checkpoints_on_cached_features_leave_the_frozen_backbone_out(
    make_cfg, fmnist_root: Path
) -> None:
    """Two checkpoints an epoch of every screen trial: the backbone, which never runs on cached
    features, is not written again each time; the best checkpoint still tests (loaded whole)."""
    from fashion_sweeps.run_folder import BACKBONE_PREFIX, WITHOUT_BACKBONE

    cfg = make_cfg("dataset=fashion_mnist", f"dataset.root={fmnist_root}", *FROZEN)
    train(cfg)
    checkpoints = sorted((Path(cfg.output_dir) / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2  # best and last
    for path in checkpoints:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved[WITHOUT_BACKBONE]
        assert not [k for k in saved["state_dict"] if k.startswith(BACKBONE_PREFIX)]
        assert [k for k in saved["state_dict"] if k.startswith("model.head.")]
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics


def test_a_finished_condition_leaves_nothing_behind_for_the_next(make_cfg, fmnist_root) -> None:
    """A sweep's conditions share a process: each left its trainer, module and feature copies
    in reference cycles, and a product-scale screen grew 230 MB a condition."""
    import gc

    from fashion_sweeps.models.module import ClassifierModule

    cfg = make_cfg("dataset=fashion_mnist", f"dataset.root={fmnist_root}", *FROZEN)
    train(cfg)
    alive = [o for o in gc.get_objects() if isinstance(o, ClassifierModule)]
    assert alive == []


def frozen_setup(make_cfg, fmnist_root: Path, *extra: str):
    cfg = make_cfg("dataset=fashion_mnist", f"dataset.root={fmnist_root}", *FROZEN, *extra)
    pl.seed_everything(cfg.seed)
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed)
    data.setup()
    prepared = data.data
    model = classifier_for(cfg, prepared)
    return cfg, data, model


def test_features_are_what_the_deployable_model_computes(make_cfg, fmnist_root: Path) -> None:
    _, data, model = frozen_setup(make_cfg, fmnist_root)
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_var.clone() for m in norms]
    pixels = data.data.pixels[:20]
    features, engine = pooled_features(model, pixels, batch_size=7)
    assert engine == TORCH_F32
    assert all(torch.equal(b, m.running_var) for b, m in zip(before, norms, strict=True))
    assert model.head.training  # the caller's modes are restored
    model.eval()
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = model(images)
        got = model.head(torch.from_numpy(features))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_key_follows_backbone_weights_and_data(make_cfg, fmnist_root: Path) -> None:
    _, _, model = frozen_setup(make_cfg, fmnist_root)
    _, _, same = frozen_setup(make_cfg, fmnist_root)
    _, _, other_seed = frozen_setup(make_cfg, fmnist_root, "seed=3")
    _, _, other_head = frozen_setup(make_cfg, fmnist_root, "head=fc")
    key = features_key(model, "data-a", TORCH_F32)
    assert features_key(same, "data-a", TORCH_F32) == key
    assert features_key(other_head, "data-a", TORCH_F32) == key  # the head is not in the features
    assert features_key(other_seed, "data-a", TORCH_F32) != key
    assert features_key(model, "data-b", TORCH_F32) != key
    # Each engine and precision computes features of its own.
    assert features_key(model, "data-a", Engine("openvino", "bf16")) != key
    assert features_key(model, "data-a", Engine("openvino", "f32")) != key
    assert features_key(model, "data-a", Engine("torch", "bf16")) != key


@pytest.mark.parametrize(
    "extra,blocker",
    [
        (["backbone.freeze=false"], "backbone is trained"),
        (["+dataset.augment.flip=true"], "augmentation is on"),
    ],
)
def test_used_only_where_it_changes_nothing(
    make_cfg, fmnist_root, tmp_path, extra, blocker
) -> None:
    _, data, model = frozen_setup(make_cfg, fmnist_root, *extra)
    use = apply_feature_cache("auto", tmp_path, model, data)
    assert use.status == "not_applicable" and blocker in use.reason
    assert data.features is None
    with pytest.raises(FeatureCacheError, match=r"cache\.features=true needs"):
        apply_feature_cache(True, tmp_path, model, data)


def test_key_of_a_pretrained_backbone_follows_its_weights(tmp_path: Path) -> None:
    """ImageNet Lite0 features are shared across seeds, but not with other weights for it."""

    def model(**options) -> Classifier:
        torch.manual_seed(len(options))  # different seeds: only the weights should matter
        backbone = efficientnet_lite0(freeze=True, **options)
        return Classifier(Preprocess(3, [0.5] * 3, [0.5] * 3), backbone, nn.Identity(), "ab", 32)

    key = features_key(model(), "data", TORCH_F32)
    assert features_key(model(pretrained=True), "data", TORCH_F32) == key
    assert features_key(model(pretrained=False), "data", TORCH_F32) != key
    tuned = efficientnet_lite0().state_dict()
    tuned["blocks.8.0.weight"] = tuned["blocks.8.0.weight"] * 1.01
    torch.save(tuned, tmp_path / "tuned.pth")
    assert features_key(model(weights_path=str(tmp_path / "tuned.pth")), "data", TORCH_F32) != key
