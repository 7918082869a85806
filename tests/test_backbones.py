"""Backbones build at tiny sizes, freeze as documented, and load pretrained weights offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fashion_sweeps.models import backbones, scratch_backbones
from fashion_sweeps.models.backbones import WeightsUnavailableError

TORCHVISION = ["mobilenet_v2", "vgg16", "resnet18", "resnet50"]
SCRATCH = ["simple_cnn", "fmnist_cnn", "mlp"]


@pytest.mark.parametrize("name", TORCHVISION + SCRATCH)
def test_every_backbone_gives_pooled_features(name: str) -> None:
    channels = 3 if name in TORCHVISION else 1
    module = backbones if name in TORCHVISION else scratch_backbones
    backbone = getattr(module, name)(in_channels=channels, image_size=32)
    features = backbone.eval()(torch.rand(2, backbone.in_channels, 32, 32))
    assert features.shape == (2, backbone.out_features)


def test_simple_cnn_widths_set_the_blocks_and_halve_the_image_each() -> None:
    backbone = scratch_backbones.simple_cnn(
        image_size=64, widths=[4, 8, 8, 8, 16], convs=[1, 1, 1, 1, 2]
    )
    assert len(backbone.blocks) == 5  # freezing counts these
    x = torch.rand(2, 3, 64, 64)
    for block in backbone.blocks:
        x = block(x)
    assert x.shape == (2, 16, 2, 2)
    assert backbone(torch.rand(2, 3, 64, 64)).shape == (2, backbone.out_features)
    with pytest.raises(backbones.ImageSizeError, match="each of its 5 blocks halves the image"):
        scratch_backbones.simple_cnn(image_size=16, widths=[4, 4, 4, 4, 4])


def test_simple_cnn_residual_blocks_add_their_input_after_the_pool() -> None:
    backbone = scratch_backbones.simple_cnn(
        image_size=16, width=4, convs=[1, 3, 1, 1], residual=True
    )
    block = backbone.blocks[1]
    skip = block[-1]
    assert isinstance(skip, scratch_backbones.Residual)
    assert isinstance(block[-2], torch.nn.MaxPool2d)  # the skip's convolutions run at half size
    x = torch.rand(2, 4, 8, 8)
    pooled = block[:-1](x)
    # With the skip's convolutions silenced the block is its first convolution and the pool.
    torch.nn.init.zeros_(skip.body[-2].weight)
    torch.nn.init.zeros_(skip.body[-2].bias)
    torch.testing.assert_close(block(x), pooled)
    # One convolution per block: nothing to go around, the plain block.
    assert not any(isinstance(m, scratch_backbones.Residual) for m in backbone.blocks[0].modules())


def test_simple_cnn_residual_with_batchnorm_builds_down_to_1x1_maps() -> None:
    # The last skip branch sees 1x1 maps at 16 px: sizing the dense layer must not train BN.
    backbone = scratch_backbones.simple_cnn(
        image_size=16, width=4, batchnorm=True, convs=[1, 1, 1, 3], residual=True
    )
    assert backbone.train()(torch.rand(2, 3, 16, 16)).shape == (2, 512)


def test_simple_cnn_global_pooling_takes_any_image_size() -> None:
    flat = scratch_backbones.simple_cnn(image_size=32, width=4)
    pooled = scratch_backbones.simple_cnn(image_size=32, width=4, pool="avg")
    assert pooled.tail[2].in_features == 16 < flat.tail[1].in_features
    for size in (32, 48):
        assert pooled.eval()(torch.rand(2, 3, size, size)).shape == (2, 512)
    with pytest.raises(RuntimeError):
        flat.eval()(torch.rand(2, 3, 48, 48))
    with pytest.raises(ValueError, match="flatten, avg or max"):
        scratch_backbones.simple_cnn(pool="mean")


def _grads_after_step(backbone: backbones.Backbone) -> dict[str, bool]:
    backbone.train()
    backbone(torch.rand(4, backbone.in_channels, 32, 32)).sum().backward()
    return {n: p.grad is not None for n, p in backbone.named_parameters()}


def test_freeze_true_trains_nothing_and_keeps_batchnorm_statistics() -> None:
    backbone = backbones.resnet18(freeze=True)
    before = backbone.blocks[0][1].running_mean.clone()
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    with torch.no_grad():
        backbone(torch.rand(4, 3, 32, 32) * 5)
    assert torch.equal(before, backbone.blocks[0][1].running_mean)
    assert all(not m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_freeze_n_leading_blocks() -> None:
    backbone = backbones.resnet18(freeze=2)
    frozen = [p for b in backbone.blocks[:2] for p in b.parameters()]
    free = [p for b in backbone.blocks[2:] for p in b.parameters()]
    assert not any(p.requires_grad for p in frozen) and all(p.requires_grad for p in free)
    backbone.train()
    assert not backbone.blocks[0].training and backbone.blocks[2].training


def test_bad_freeze_value_is_explained() -> None:
    with pytest.raises(ValueError, match="leading blocks"):
        backbones.resnet18(freeze=9)


def test_weights_path_loads_the_saved_weights(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.mobilenet_v2(weights=None)
    torch.save(reference.state_dict(), tmp_path / "mnv2.pth")
    backbone = backbones.mobilenet_v2(weights_path=str(tmp_path / "mnv2.pth"))
    assert torch.equal(backbone.blocks[0][0].weight, reference.features[0][0].weight)


def test_pretrained_loads_from_the_torch_home_cache(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cache = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), cache)
    backbone = backbones.resnet18(pretrained=True)
    assert torch.equal(backbone.blocks[0][0].weight, reference.conv1.weight)


def test_pretrained_without_cache_or_network_fails_before_training(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        backbones.mobilenet_v2(pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "weights_path" in message and "pretrained=false" in message


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        backbones.resnet18(weights_path=str(tmp_path / "nope.pth"))


def test_scratch_backbones_have_no_pretrained_weights() -> None:
    with pytest.raises(WeightsUnavailableError, match="from-scratch"):
        scratch_backbones.simple_cnn(pretrained=True)


def test_partial_fine_tuning_changes_only_the_unfrozen_blocks() -> None:
    torch.manual_seed(0)
    backbone = backbones.mobilenet_v2(freeze=10)
    head = nn.Linear(backbone.out_features, 3)
    params = [p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad]
    before = [b.state_dict() for b in backbone.blocks]
    before = [{k: v.clone() for k, v in sd.items()} for sd in before]
    optimizer = torch.optim.SGD(params, lr=0.1)
    backbone.train()
    loss = nn.functional.cross_entropy(
        head(backbone(torch.rand(4, 3, 32, 32))), torch.arange(4) % 3
    )
    loss.backward()
    optimizer.step()
    for i, block in enumerate(backbone.blocks):
        changed = any(not torch.equal(v, before[i][k]) for k, v in block.state_dict().items())
        assert changed == (i >= 10), f"block {i}"
