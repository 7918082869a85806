"""Batch augmentation (data/augment.py): each option does what it says, on whole batches, and a run
that uses it trains; the loaders serve whole batches as the per-item path would."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from fashion_sweeps.data.augment import AugmentError, BatchAugment, batch_augment
from fashion_sweeps.data.datamodule import FashionDataModule, ImageArrayDataset
from fashion_sweeps.models.classifier import TestTimeError, center_crop, crop_areas
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train


def batch(n: int = 16, channels: int = 3, size: int = 12) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, channels, size, size)


def test_flip_mirrors_about_half_the_images_exactly() -> None:
    x = batch(64)
    out = BatchAugment(flip=True)(x)
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all())  # nothing interpolated
    assert 10 < int(mirrored.sum()) < 54


def test_crop_padding_shifts_by_whole_pixels_with_zero_fill() -> None:
    x = batch(32, size=10)
    out = BatchAugment(crop_padding=2)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for original, shifted in zip(padded, out, strict=True):
        crops = [original[:, i : i + 10, j : j + 10] for i in range(5) for j in range(5)]
        assert any(torch.allclose(shifted, c, atol=1e-5) for c in crops)
    assert not torch.allclose(out, x)


def test_erasing_blanks_one_rectangle_and_keeps_the_rest() -> None:
    x = batch(32) * 0.9 + 0.05  # no pixel is 0 before erasing
    out = BatchAugment(erasing=1.0)(x)
    for before, after in zip(x, out, strict=True):
        erased = (after == 0).all(dim=0)
        rows, cols = erased.nonzero(as_tuple=True)
        assert len(rows) > 0
        box = erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all())  # one solid rectangle
        assert torch.equal(after[:, ~erased], before[:, ~erased])


def test_zoom_rotation_and_jitter_keep_shape_and_range() -> None:
    x = batch(8)
    out = BatchAugment(
        scale=[0.5, 1.0], rotation=15, color_jitter=0.3, flip=True, padding="reflection"
    )(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out, x)


def test_zoom_of_a_full_area_is_the_identity() -> None:
    x = batch(4)
    assert torch.allclose(BatchAugment(scale=[1.0, 1.0])(x), x, atol=1e-5)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"flip": True, "hue": 0.2}, r"Unknown dataset.augment option\(s\) \['hue'\]"),
        ({"mixup": -1}, r"dataset.augment.mixup=-1"),
        ({"cutmix": "yes"}, r"dataset.augment.cutmix='yes'"),
        ({"scale": [0.9, 0.2]}, r"dataset.augment.scale"),
        ({"padding": "wrap"}, r"dataset.augment.padding='wrap'"),
        ({"erasing": 2}, r"dataset.augment.erasing"),
        ({"crop_padding": -2}, r"dataset.augment.crop_padding=-2"),
        ({"color_jitter": 1.5}, r"dataset.augment.color_jitter=1.5"),
        ({"scale": 0.8}, r"dataset.augment.scale=0.8"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(AugmentError, match=message):
        batch_augment(options)


def test_mixup_blends_images_and_labels_in_the_same_proportion() -> None:
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, target = batch_augment({"mixup": 0.4}).mix(x, y, num_classes=4)
    assert target.shape == (6, 4) and torch.allclose(target.sum(1), torch.ones(6))
    # One weight per batch: each image blends with the one before it (torchvision's roll).
    lam = float(target[0, 0])  # image 0 is class 0, its partner (image 5) class 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)


def test_cutmix_pastes_a_rectangle_and_labels_by_its_area() -> None:
    x, y = torch.zeros(4, 1, 10, 10), torch.tensor([0, 1, 2, 3])
    x[1::2] = 1.0  # images 1 and 3 white: a rectangle from them shows in 0 and 2
    mixed, target = batch_augment({"cutmix": 1.0}).mix(x, y, num_classes=4)
    pasted = mixed[0].mean()  # image 0 is black with its partner's (3, white) rectangle
    assert target[0, 3] == pytest.approx(float(pasted), abs=1e-6)
    assert target[0, 0] == pytest.approx(1 - float(pasted), abs=1e-6)
    assert set(mixed.unique().tolist()) <= {0.0, 1.0}  # pasted, not blended


def test_without_mixing_labels_stay_class_indices() -> None:
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([1, 0])
    same_x, same_y = batch_augment({"flip": True}).mix(x, y, num_classes=2)
    assert same_x is x and same_y is y


def test_all_off_means_no_augmentation() -> None:
    assert batch_augment(None) is None
    assert batch_augment({"flip": False, "rotation": 0}) is None


def test_loader_serves_whole_batches_equal_to_single_items() -> None:
    pixels = torch.randint(0, 255, (20, 6, 6, 1), dtype=torch.uint8).numpy()
    targets = torch.arange(20).numpy()
    ds = ImageArrayDataset(pixels, targets, indices=torch.tensor([3, 3, 7, 19]).numpy())
    x, y = ds.__getitems__([0, 1, 3])
    items = [ds[i] for i in (0, 1, 3)]
    assert torch.equal(x, torch.stack([i[0] for i in items]))
    assert y.tolist() == [3, 3, 19]


def test_augmented_run_augments_training_batches_only(make_cfg, fmnist_root, monkeypatch) -> None:
    seen = []
    original = BatchAugment.forward
    monkeypatch.setattr(
        BatchAugment, "forward", lambda self, x: seen.append(len(x)) or original(self, x)
    )
    cfg = make_cfg(
        f"dataset.root={fmnist_root}",
        "backbone.widths=[4,4,4]",
        "backbone.dense=8",
        "trainer.max_epochs=2",
        "trainer.channels_last=true",
        "dataset.batch_size=16",
        "+dataset.augment={flip: true, crop_padding: 2, erasing: 0.5, scale: [0.7, 1.0], "
        "mixup: 0.2, cutmix: 1.0}",
    )
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed)
    assert isinstance(data.train_augmentation(), BatchAugment)
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["status"] == "finished"
    assert run.data.tags["feature_cache"] == "not_applicable"  # augmentation changes every epoch
    # Every training image of both epochs, and not one validation or test image.
    assert sum(seen) == run.data.metrics["train_images_seen"] == 2 * int(run.data.params["n_train"])


def test_test_time_flip_averages_an_image_and_its_mirror(make_cfg, fmnist_root) -> None:
    from fashion_sweeps.data.datamodule import prepare_arrays
    from fashion_sweeps.models.classifier import classifier_for

    cfg = make_cfg(f"dataset.root={fmnist_root}", "backbone.widths=[4,4,4]", "test_time_flip=true")
    model = classifier_for(cfg, prepare_arrays(cfg.dataset, cfg.seed))
    x = torch.randint(0, 255, (5, 1, 28, 28), dtype=torch.uint8)
    model.eval()
    model.test_time_flip = False
    plain, mirrored = model(x), model(x.flip(-1))
    model.test_time_flip = True
    assert torch.allclose(model(x), (plain + mirrored) / 2, atol=1e-5)
    model.train()  # training sees each image once, as it is
    torch.manual_seed(0)
    a = model(x)
    model.test_time_flip = False
    torch.manual_seed(0)
    assert torch.allclose(a, model(x))


def test_center_crop_keeps_the_middle_at_full_size() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:6, 2:6] = 1.0  # a white square in the middle quarter of the area
    assert torch.equal(center_crop(x, 0.25), torch.ones(1, 1, 8, 8))
    assert center_crop(x, 1.0) is x


def test_test_time_crops_average_the_crops_and_their_mirrors(make_cfg, fmnist_root) -> None:
    from fashion_sweeps.data.datamodule import prepare_arrays
    from fashion_sweeps.models.classifier import classifier_for

    cfg = make_cfg(
        f"dataset.root={fmnist_root}",
        "backbone.widths=[4,4,4]",
        "test_time_flip=true",
        "test_time_crops=[1.0,0.5]",
    )
    model = classifier_for(cfg, prepare_arrays(cfg.dataset, cfg.seed)).eval()
    x = torch.randint(0, 255, (5, 1, 28, 28), dtype=torch.uint8)
    views = [center_crop(x.float(), a) for a in (1.0, 0.5)]
    views += [v.flip(-1) for v in views]
    model.test_time_crops, model.test_time_flip = [1.0], False
    singles = [model(v / 255) for v in views]
    model.test_time_crops, model.test_time_flip = [1.0, 0.5], True
    assert torch.allclose(model(x), torch.stack(singles).mean(0), atol=1e-5)


@pytest.mark.parametrize("value", [1.5, 0, [], "big", [1.0, -0.2]])
def test_bad_test_time_crops_are_named(value) -> None:
    with pytest.raises(TestTimeError, match="test_time_crops"):
        crop_areas(value)


def test_a_single_test_time_crop_is_what_evaluation_sees(make_cfg, fmnist_root) -> None:
    from fashion_sweeps.data.datamodule import prepare_arrays
    from fashion_sweeps.models.classifier import classifier_for

    cfg = make_cfg(f"dataset.root={fmnist_root}", "backbone.widths=[4,4,4]", "test_time_crops=0.5")
    model = classifier_for(cfg, prepare_arrays(cfg.dataset, cfg.seed)).eval()
    x = torch.rand(3, 1, 28, 28)
    cropped = model(x)
    model.test_time_crops = [1.0]
    assert torch.allclose(cropped, model(center_crop(x, 0.5)), atol=1e-5)
    assert not torch.allclose(cropped, model(x), atol=1e-3)
