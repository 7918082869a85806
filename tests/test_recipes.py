"""The Fashion Product recipes (conf/experiment/product_*.yaml) as a user runs them: real tiny
runs on a Fashion Product Images fixture in the real on-disk layout (styles.csv +
images/<id>.jpg, 16 px, random backbone weights); and the class-rank filter they rely on."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_image, fashion_sweeps, output
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.data.sources import DataError
from fashion_sweeps.data.splits import frequency_ranked, label_filter
from fashion_sweeps.models.backbones import resnet18
from fashion_sweeps.models.export import (
    BACKBONE_PREFIX,
    ExportError,
    as_torchvision,
    export_backbone,
)
from fashion_sweeps.models.export import main as export_main
from fashion_sweeps.models.timm_backbones import efficientnet_lite0
from fashion_sweeps.sweeps.space import SearchSpace
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

# Article types and their number of images. The recipes keep the classes with >= 50 images
# ('Waist Pouch' is dropped); 'Shirts' and 'Casual Shoes' tie, and 'Shirts' rows come first in
# styles.csv: the tie is broken by name, so 'Casual Shoes' ranks 1 and 'Shirts' 2.
ARTICLES = {"Tshirts": 60, "Shirts": 52, "Casual Shoes": 52, "Watches": 50, "Waist Pouch": 10}
BY_FREQUENCY = ["Tshirts", "Casual Shoes", "Shirts", "Watches"]
TINY = ["backbone.pretrained=false", "dataset.image_size=16", "trainer.progress=lines"]


def write_product(root: Path, articles: dict[str, int] = ARTICLES) -> Path:
    """styles.csv + images/<id>.jpg in Kaggle's layout (unquoted commas in product names)."""
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    lines = [
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
        "productDisplayName"
    ]
    image_id = 2000
    for c, (article, n) in enumerate(articles.items()):
        for i in range(n):
            image_id += 1
            class_image(c, rng, size=16).save(root / "images" / f"{image_id}.jpg")
            name = f"Brand Men, {article} {i}, Blue"
            lines.append(f"{image_id},Men,Apparel,Topwear,{article},Blue,Fall,2012,Casual,{name}")
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def product_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_product(tmp_path_factory.mktemp("data") / "fashion_product")


# --- the class-rank filter ----------------------------------------------------------------------


def labels_of(counts: dict[str, int]) -> list[str]:
    return [name for name, n in counts.items() for _ in range(n)]


def kept(labels: list[str], keep: np.ndarray) -> list[str]:
    return sorted(set(np.asarray(labels, dtype=object)[keep].tolist()))


def test_frequency_ranks_break_ties_by_name() -> None:
    counts = {"b": 3, "a": 3, "z": 7, "c": 1}
    assert frequency_ranked(counts) == ["z", "a", "b", "c"]


def test_class_ranks_keep_the_classes_of_their_frequency_ranks() -> None:
    labels = labels_of(ARTICLES)
    keep, dropped = label_filter(labels, min_count=50, class_ranks=[0, 2])
    assert kept(labels, keep) == ["Casual Shoes", "Tshirts"]
    assert dropped == {"rare_class": 10, "class_rank": 52 + 50}
    keep, dropped = label_filter(labels, min_count=50, class_ranks=[2, None])
    assert kept(labels, keep) == ["Shirts", "Watches"]
    assert dropped == {"rare_class": 10, "class_rank": 60 + 52}
    # Ranks count the classes the other filters leave, in the same order.
    keep, _ = label_filter(labels, exclude=["Tshirts"], min_count=50, class_ranks=(0, 1))
    assert kept(labels, keep) == ["Casual Shoes"]
    keep, dropped = label_filter(labels, min_count=50, class_ranks=[0, 4])
    assert kept(labels, keep) == sorted(BY_FREQUENCY) and "class_rank" not in dropped


@pytest.mark.parametrize(
    "ranks,message",
    [
        ([4, None], r"class_ranks=\[4, null\] starts at rank 4, beyond the last class"),
        ([0, 5], r"ends at rank 5, beyond the last class"),
        ([2, 2], "selects no class"),
        ([-1, 2], "selects no class"),
        ([1], "is not a range of frequency ranks"),
        ("0,20", "is not a range of frequency ranks"),
        ([0.5, 2], "is not a range of frequency ranks"),
    ],
)
def test_impossible_class_ranks_are_a_clear_error(ranks, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        label_filter(labels_of(ARTICLES), min_count=50, class_ranks=ranks)
    if "beyond" in message:  # says how many classes there are and what would do
        assert "4 classes are left" in str(err.value) and "0 <= start < end <= 4" in str(err.value)


# --- the recipes' settings ------------------------------------------------------------------------


def compose_sweep(*overrides: str):
    """The config of a `fashion-sweeps screen|full` job (hydra node included)."""
    import fashion_sweeps.sweeps.sweeper  # noqa: F401  (stores hydra/sweeper/stages)

    with initialize_config_dir(str(CONF_DIR)):
        return compose("config", overrides=["sweep=grid", *overrides], return_hydra_config=True)


def test_product_screen_is_the_24_condition_frozen_screen_then_4_full_runs() -> None:
    cfg = compose_sweep("experiment=product_screen", "sweep.stage=screen")
    grid = SearchSpace.parse(cfg.hydra.sweeper.params, []).grid()
    assert len(grid) == 24
    assert {p["backbone"] for p in grid} == {"efficientnet_lite0", "efficientnet_lite2"}
    assert {p["head"] for p in grid} == {"fc", "batchnorm"}
    assert {p["optimizer"] for p in grid} == {"adam", "sgd"}
    assert {str(p["optimizer.lr"]) for p in grid} == {"0.1", "0.01", "0.001"}
    assert cfg.backbone.freeze is True and cfg.backbone.pretrained is True
    assert cfg.dataset.name == "fashion_product" and cfg.dataset.min_count == 50
    assert cfg.dataset.reader.label_column == "articleType"
    assert cfg.trainer.max_epochs == 3
    full = compose_sweep("experiment=product_screen", "sweep.stage=full")
    assert full.sweep.full.top_k == 4
    assert (full.trainer.max_epochs, full.trainer.patience) == (10, 3)


def test_make_passes_the_recipe_and_lets_it_choose_its_data_set() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    args = ["make", "-n", "--no-print-directory", "sweep", "EXPERIMENT=product_screen"]
    root = Path(__file__).parent.parent
    command = subprocess.run(
        [*args, "ROOT=/data/fpi"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    first = command.splitlines()[0].split()
    assert first[1:] == ["sweep", "dataset.root=/data/fpi", "experiment=product_screen"]


# --- real tiny runs -------------------------------------------------------------------------------


@pytest.mark.slow  # a product_screen sweep process, ~25 s: `make test-slow`
def test_product_screen_runs_its_screen_and_full_runs(product_data: Path, tmp_path: Path) -> None:
    """The recipe as `fashion-sweeps sweep` runs it, narrowed to 2 conditions x 1 epoch."""
    result = fashion_sweeps(
        tmp_path,
        "sweep",
        "experiment=product_screen",
        f"dataset.root={product_data}",
        f"tracking.dir={tmp_path / 'mlruns'}",
        *TINY,
        "backbone=efficientnet_lite0",
        "head=fc,batchnorm",
        "optimizer=adam",
        "optimizer.lr=0.01",
        "sweep.screen.max_epochs=1",
        "sweep.full.top_k=1",
        "sweep.full.max_epochs=2",
        "sweep.full.log_model=false",
    )
    assert "2 condition(s) planned, 0 done, 2 to train" in output(result)
    folder = tmp_path / "multirun/sweeps/product_screen"
    with (folder / "screen/ranking.csv").open() as f:
        ranking = list(csv.DictReader(f))
    assert [r["status"] for r in ranking] == ["finished", "finished"]
    with (folder / "full/comparison.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recipes")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("run_kind") != "stage"]
    assert sorted(r.data.tags["stage"] for r in children) == ["full", "screen", "screen"]
    for run in children:
        assert run.data.tags["status"] == "finished"
        assert run.data.params["backbone.freeze"] == "True"
        assert run.data.params["num_classes"] == "4"  # 'Waist Pouch' has < 50 images
        assert run.data.metrics["skipped_rare_class"] == 10
        assert run.data.tags["feature_cache"] in ("miss", "hit")  # frozen: features computed once


def test_product_imbalance_top_classes_then_the_rest(
    product_data: Path, make_cfg, tmp_path: Path
) -> None:
    """Stage one (one epoch, the top 2 here) with class weights and a per-class top-1/top-5
    table; its backbone exported and loaded by stage two, on the other classes."""
    first = make_cfg(
        "experiment=product_imbalance",
        f"dataset.root={product_data}",
        *TINY,
        "dataset.class_ranks=[0,2]",
        "dataset.batch_size=16",
        "trainer.max_epochs=1",
        "tracking.log_model=false",
    )
    assert math.isfinite(train(first))
    out = Path(first.output_dir)
    with (out / "evaluation/per_class.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {"top1", "top5"} <= set(table[0])
    assert [row["class"] for row in table] == ["Casual Shoes", "Tshirts"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("recipes").experiment_id])
    assert run.data.params["sampler._target_"].endswith("class_weights")
    assert run.data.metrics["skipped_class_rank"] == 52 + 50
    path = client.download_artifacts(run.info.run_id, "data/sampling.json", str(tmp_path))
    sampling = json.loads(Path(path).read_text())
    weights = {k: v["loss_weight"] for k, v in sampling["classes"].items()}
    assert weights["Casual Shoes"] > weights["Tshirts"]  # the rarer class weighs more

    assert export_main([str(out)]) == 0  # `fashion-sweeps export-backbone <folder>`
    weights_file = out / "backbone.pth"
    checkpoint = next((out / "checkpoints").glob("best-*.ckpt"))
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    loaded = efficientnet_lite0(weights_path=str(weights_file)).state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, trained[BACKBONE_PREFIX + key]), key

    second = make_cfg(
        "experiment=product_imbalance",
        f"dataset.root={product_data}",
        *TINY,
        "dataset.class_ranks=[2,null]",
        f"backbone.weights_path={weights_file}",
        "dataset.batch_size=16",
        "trainer.max_epochs=1",
        "tracking.log_model=false",
        "tracking.run_name=product_imbalance_rest",
    )
    second.output_dir = str(tmp_path / "rest")
    assert math.isfinite(train(second))
    labels = json.loads((tmp_path / "rest/evaluation/per_class.json").read_text())
    assert sorted(row["class"] for row in labels) == ["Shirts", "Watches"]


def test_export_refuses_what_is_not_a_run_or_not_its_architecture(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no mlflow_run"):
        export_backbone(tmp_path)
    state = resnet18().state_dict()
    with pytest.raises(ExportError, match="does not match torchvision's mobilenet_v2"):
        as_torchvision("mobilenet_v2", state)


@pytest.mark.parametrize(
    "recipe,fixture,shrink",
    [
        ("fmnist_cnn", "fmnist_root", ["dataset.val_fraction=0.3"]),
        ("fmnist_best", "fmnist_root", ["dataset.val_fraction=0.3", "backbone.widths=[4,4,4]"]),
        ("clothing_scratch", "clothing_root", ["dataset.image_size=16", "backbone.width=4"]),
        (
            "clothing_transfer",
            "clothing_root",
            ["dataset.image_size=32", "backbone.pretrained=false"],
        ),
    ],
)
def test_single_run_recipes_train_an_epoch_on_fixtures(make_cfg, request, recipe, fixture, shrink):
    """Each recipe as written (its augmentation, test-time flips, channels-last, scheduler...),
    shrunk only in size and length, trains, tests and lands in MLflow tagged with its name."""
    root = request.getfixturevalue(fixture)
    cfg = make_cfg(
        f"experiment={recipe}",
        f"dataset.root={root}",
        "trainer.max_epochs=1",
        "dataset.batch_size=8",
        "tracking.log_model=false",
        *shrink,
    )
    assert math.isfinite(train(cfg))
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([client.get_experiment_by_name("recipes").experiment_id])
    assert run.data.tags["status"] == "finished"
    assert run.data.tags["recipe"] == recipe
    assert 0 <= run.data.metrics["test_acc"] <= 1


@pytest.mark.parametrize("dataset", ["clothing", "fashion_product", "fashion_mnist"])
def test_a_named_data_set_gets_the_frozen_transfer_screen(dataset: str) -> None:
    """`make sweep DATASET=clothing` screened MobileNetV2 and VGG16 from random weights at 64 px
    (first conditions at 19.9% and 40.7%): with ImageNet weights offline, the default grid is
    the transfer screen, each backbone frozen at its weights' resolution."""
    cfg = compose_sweep(f"dataset={dataset}", "sweep.stage=screen")
    grid = SearchSpace.parse(cfg.hydra.sweeper.params, []).grid()
    assert len(grid) == 24
    assert {p["backbone"] for p in grid} == {"efficientnet_lite0", "efficientnet_lite2"}
    for backbone, size in (("efficientnet_lite0", 224), ("efficientnet_lite2", 260)):
        job = compose_sweep(f"dataset={dataset}", "sweep.stage=screen", f"backbone={backbone}")
        assert (job.dataset.image_size, job.backbone.freeze) == (size, True)
        assert job.dataset.augment is None  # the features are computed once per backbone


def test_the_from_scratch_grid_stays_one_option_away() -> None:
    cfg = compose_sweep("dataset=clothing", "sweep=scratch", "sweep.stage=screen")
    grid = SearchSpace.parse(cfg.hydra.sweeper.params, []).grid()
    assert {p["backbone"] for p in grid} == {"mobilenet_v2", "vgg16"} and len(grid) == 24
    job = compose_sweep("dataset=clothing", "sweep=scratch", "backbone=vgg16", "sweep.stage=screen")
    assert (job.dataset.image_size, job.backbone.freeze, job.backbone.pretrained) == (
        64,
        False,
        False,
    )
    assert job.sweep.name == "clothing-scratch"
