"""Every option of every config group composes, and the components it names build."""

from __future__ import annotations

import pytest
import torch

from fashion_sweeps.config import CONF_DIR, build, component_name, condition_key
from fashion_sweeps.models.classifier import build_classifier


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_composes(make_cfg) -> None:
    cfg = make_cfg()
    assert cfg.dataset.name == "fashion_mnist"
    assert condition_key(cfg) == "fmnist_cnn/fc/adam/0.001"


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_composes(make_cfg, dataset: str) -> None:
    cfg = make_cfg(f"dataset={dataset}")
    assert cfg.dataset.reader._target_.startswith("fashion_sweeps.data.sources.read_")
    assert cfg.dataset.image_size > 0


@pytest.mark.parametrize("backbone", options("backbone"))
@pytest.mark.parametrize("head", options("head"))
def test_every_backbone_and_head_builds_into_a_classifier(make_cfg, backbone, head) -> None:
    cfg = make_cfg(f"backbone={backbone}", f"head={head}")
    model = build_classifier(
        cfg.backbone, cfg.head, ["a", "b", "c"], 1, 32, lambda: ([0.5], [0.25])
    ).eval()
    logits = model(torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8))
    assert logits.shape == (2, 3)
    assert component_name(cfg.backbone) == backbone and component_name(cfg.head) == head


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_builds(make_cfg, optimizer, scheduler) -> None:
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "optimizer.lr=0.05")
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build(cfg.optimizer)(params)
    assert opt.param_groups[0]["lr"] == 0.05  # conf/optimizer/*.yaml's lr is the optimizer's lr
    if cfg.scheduler.get("_target_"):
        scheduler = build(cfg.scheduler)(opt)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize("group", ["sampler", "trainer", "tracking"])
def test_every_other_option_composes(make_cfg, group: str) -> None:
    for option in options(group):
        assert make_cfg(f"{group}={option}")[group] is not None


def test_unknown_option_is_a_clear_error(make_cfg) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="backbone"):
        make_cfg("backbone=resnet999")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_recipe_composes(make_cfg, experiment: str) -> None:
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.tracking.run_name == experiment
    assert cfg.trainer.max_epochs >= 1


@pytest.mark.parametrize(
    "backbone,size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260), ("resnet18", 224)]
)
def test_the_clothing_screen_runs_each_backbone_at_its_weights_resolution(
    make_cfg, backbone: str, size: int
) -> None:
    cfg = make_cfg("experiment=clothing_screen", f"backbone={backbone}")
    assert cfg.dataset.image_size == size


def test_a_backbone_without_weights_has_no_native_resolution_to_follow(make_cfg) -> None:
    cfg = make_cfg("experiment=clothing_screen", "backbone=mlp")
    with pytest.raises(Exception, match=r"give dataset\.image_size as a number of pixels"):
        _ = cfg.dataset.image_size


@pytest.mark.parametrize(
    "overrides,size",
    [
        # `train dataset=clothing_sample backbone=efficientnet_lite0` ran Lite0 at the sample's
        # 32 px (29.2% after 8 epochs; 72.9% at 160 px): weights run at their resolution.
        (["backbone=efficientnet_lite0"], 224),
        (["backbone=efficientnet_lite2"], 260),
        (["backbone=mobilenet_v2", "backbone.weights_path=w.pth"], 224),
        (["backbone=efficientnet_lite0", "dataset.image_size=96"], 96),  # given: as given
        (["backbone=efficientnet_lite0", "backbone.pretrained=false"], 32),  # from scratch
        (["backbone=simple_cnn"], 32),
        (["backbone=mobilenet_v2"], 32),  # pretrained: false by default (no weights offline)
    ],
)
def test_a_pretrained_backbone_trains_at_its_weights_resolution_unless_told(
    make_cfg, overrides: list[str], size: int
) -> None:
    assert make_cfg("dataset=clothing_sample", *overrides).dataset.image_size == size


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_recipe_composes_as_a_sweep_stage(make_cfg, experiment: str) -> None:
    """`fashion-sweeps screen|full experiment=NAME`: the recipe is merged after `sweep=grid`."""
    import fashion_sweeps.sweeps.sweeper  # noqa: F401  (stores hydra/sweeper/stages)

    for stage in ("screen", "full"):
        cfg = make_cfg("sweep=grid", f"experiment={experiment}", f"sweep.stage={stage}")
        assert cfg.trainer.max_epochs >= 1 and cfg.sweep.stage == stage


def test_a_condition_reads_the_same_from_its_config_and_from_its_runs_tags(make_cfg) -> None:
    """One definition of a condition: the tags a run is given are the ones the tables and the
    report read it back from (tables, report and sweeper each spelled the parts out before)."""
    from fashion_sweeps.config import Condition

    cfg = make_cfg("backbone=simple_cnn", "optimizer=sgd", "optimizer.lr=0.00001")
    condition = Condition.of(cfg)
    assert condition.key == "simple_cnn/fc/sgd/1e-05" == condition_key(cfg)
    assert Condition.from_tags(condition.tags()) == condition
    row = {**condition.cells(), "status": "finished"}  # a row of the sweep tables
    assert row["lr"] == 1e-05 and Condition.from_tags(row) == condition
    assert condition.group == "simple_cnn × fc × sgd"
    sampled = make_cfg("backbone=simple_cnn", "sampler=oversample")
    assert Condition.of(sampled).key.endswith("/oversample")
