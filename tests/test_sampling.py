"""Samplers: the class counts imbalanced-learn promises, on indices, seeded; class weights;
validation and test splits never resampled; a one-image class never crashes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from mlflow.tracking import MlflowClient
from sklearn.utils.class_weight import compute_class_weight

from fashion_sweeps.config import build, condition_key
from fashion_sweeps.data import sampling
from fashion_sweeps.data.datamodule import FashionDataModule
from fashion_sweeps.data.sampling import SamplerError
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

# 4 classes: 50, 20, 5 and a single image, shuffled.
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 3], [50, 20, 5, 1]))
K = 4
SAMPLERS = ["none", "oversample", "undersample", "over_under", "class_weights", "weighted"]


def counts_of(plan: sampling.SamplingPlan) -> list[int]:
    return np.bincount(LABELS[plan.indices], minlength=K).tolist()


def imblearn_counts(sampler) -> list[int]:
    _, y = sampler.fit_resample(np.zeros((len(LABELS), 1)), LABELS)
    return np.bincount(y, minlength=K).tolist()


def test_none_keeps_every_item_once() -> None:
    plan = sampling.none(LABELS, K, seed=0)
    assert sorted(plan.indices.tolist()) == list(range(len(LABELS)))
    assert plan.class_weights is None and plan.weighted_sampler is None


def test_oversample_matches_imbalanced_learn_and_keeps_every_original() -> None:
    plan = sampling.oversample(LABELS, K, seed=0)
    promised = imblearn_counts(RandomOverSampler(sampling_strategy="not majority"))
    assert counts_of(plan) == promised == [50, 50, 50, 50]
    assert set(plan.indices.tolist()) == set(range(len(LABELS)))


def test_undersample_matches_imbalanced_learn_without_repeats() -> None:
    plan = sampling.undersample(LABELS, K, seed=0)
    promised = imblearn_counts(RandomUnderSampler(sampling_strategy="not minority"))
    assert counts_of(plan) == promised == [1, 1, 1, 1]  # the one-image class sets the count
    assert len(set(plan.indices.tolist())) == len(plan.indices)


@pytest.mark.parametrize("per_class,expected", [(10, 10), (None, round(len(LABELS) / K))])
def test_over_under_gives_every_class_the_per_class_count(per_class, expected) -> None:
    plan = sampling.over_under(LABELS, K, seed=0, per_class=per_class)
    assert counts_of(plan) == [expected] * K
    # Classes larger than the count are cut without repeats.
    big = plan.indices[LABELS[plan.indices] == 0]
    assert len(set(big.tolist())) == len(big)


def test_over_under_rejects_a_count_below_one() -> None:
    with pytest.raises(SamplerError, match="per_class=0"):
        sampling.over_under(LABELS, K, seed=0, per_class=0)


@pytest.mark.parametrize("name", ["oversample", "undersample", "over_under"])
def test_resampling_is_seeded(name: str) -> None:
    strategy = getattr(sampling, name)
    first, again = strategy(LABELS, K, seed=3), strategy(LABELS, K, seed=3)
    other = strategy(LABELS, K, seed=4)
    assert np.array_equal(first.indices, again.indices)
    assert not np.array_equal(np.sort(first.indices), np.sort(other.indices))


def test_inverse_frequency_weights_equal_scikit_learns_balanced_weights() -> None:
    plan = sampling.class_weights(LABELS, K, seed=0, scheme="inverse_frequency")
    expected = compute_class_weight("balanced", classes=np.arange(K), y=LABELS)
    assert plan.class_weights.numpy() == pytest.approx(expected, rel=1e-6)
    assert counts_of(plan) == [50, 20, 5, 1]  # no resampling


def test_effective_number_weights_follow_cui_et_al() -> None:
    beta = 0.9
    plan = sampling.class_weights(LABELS, K, seed=0, scheme="effective_number", beta=beta)
    n = np.array([50, 20, 5, 1])
    raw = (1 - beta) / (1 - beta**n)
    assert plan.class_weights.numpy() == pytest.approx(raw * K / raw.sum(), rel=1e-5)
    assert plan.class_weights.sum().item() == pytest.approx(K)


def test_a_class_without_training_images_gets_a_neutral_weight() -> None:
    weights = sampling.class_weight_values(LABELS, K + 1)
    assert weights[K] == 1.0 and np.isfinite(weights).all()


@pytest.mark.parametrize(
    "options,message",
    [({"scheme": "sqrt"}, "scheme='sqrt'"), ({"scheme": "effective_number", "beta": 1.0}, "beta")],
)
def test_bad_class_weight_options_say_what_to_use(options, message) -> None:
    with pytest.raises(SamplerError, match=message):
        sampling.class_weights(LABELS, K, seed=0, **options)


def test_weighted_sampler_makes_every_class_equally_likely() -> None:
    plan = sampling.weighted(LABELS, K, seed=0)
    assert plan.images_per_epoch == len(LABELS)
    assert plan.counts_after(LABELS, K) == pytest.approx([len(LABELS) / K] * K)


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_single_class_training_split_is_left_as_it_is(name: str) -> None:
    labels = np.zeros(5, dtype=np.int64)
    plan = getattr(sampling, name)(labels, 2, seed=0)
    assert len(plan.indices) == 5


def test_summary_reports_counts_before_and_after_by_class_name() -> None:
    plan = sampling.oversample(LABELS, K, seed=0)
    summary = sampling.sampling_summary(plan, LABELS, ["a", "b", "c", "d"], "oversample")
    assert summary["images_per_epoch"] == 200
    assert summary["classes"]["d"] == {"before": 1, "after": 50.0}


@pytest.mark.parametrize("name", SAMPLERS)
def test_only_the_training_split_is_resampled(make_cfg, clothing_root: Path, name: str) -> None:
    # exclude=[] keeps the one-image 'Skip' class: it stays in train and must not crash a sampler.
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.exclude=[]",
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        f"sampler={name}",
    )
    assert condition_key(cfg).endswith("" if name == "none" else f"/{name}")
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed)
    data.setup()
    counts = data.data.counts()
    assert counts["train"]["Skip"] == 1 and "Skip" not in counts["test"]
    for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
        seen = Counter(data.classes[int(y)] for _, ys in loader for y in ys)
        assert dict(sorted(seen.items())) == counts[split]
    train_loader = data.train_dataloader()
    drawn = torch.cat([ys for _, ys in train_loader])
    assert len(drawn) == data.plan.images_per_epoch
    # Indices, not copies: the training set reads the one decoded array.
    assert train_loader.dataset.pixels.data_ptr() == torch.from_numpy(data.data.pixels).data_ptr()


def test_weighted_sampler_draws_differently_each_epoch(make_cfg, clothing_root: Path) -> None:
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        "sampler=weighted",
    )
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed)
    data.setup()
    loader = data.train_dataloader()
    epochs = [torch.cat([x.flatten(1).float().sum(1) for x, _ in loader]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])


def test_sampler_plan_is_built_from_config() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.create({"_target_": "fashion_sweeps.data.sampling.over_under", "per_class": 3})
    plan = build(node, labels=LABELS, num_classes=K, seed=0)
    assert counts_of(plan) == [3] * K


def test_a_run_logs_the_counts_before_and_after(make_cfg, clothing_root: Path) -> None:
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        "backbone=simple_cnn",
        "backbone.width=4",
        "dataset.exclude=[]",  # the one-image 'Skip' class: undersampling cuts all to 1
        "trainer.max_epochs=1",
        "sampler=undersample",
    )
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["sampler"] == "undersample"
    before = json.loads(run.data.params["train_counts_before"])
    after = json.loads(run.data.params["train_counts_after"])
    smallest = min(before.values())
    assert set(after.values()) == {smallest} and max(before.values()) > smallest
    assert run.data.metrics["train_images_seen"] == smallest * len(before)
    path = client.download_artifacts(run.info.run_id, "data/sampling.json", str(cfg.output_dir))
    summary = json.loads(Path(path).read_text())
    assert summary["strategy"] == "undersample"
