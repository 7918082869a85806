"""The sampler study: one child run per sampler under a parent that holds the table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fashion_sweeps.sampler_study import main, run_study


@pytest.fixture
def study_args(tmp_path: Path, clothing_root: Path) -> list[str]:
    return [
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"study.output_dir={tmp_path / 'study'}",
        "trainer.progress=lines",
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.exclude=[]",  # the one-image 'Skip' class: undersampling cuts every class to 1
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        "backbone=simple_cnn",
        "backbone.width=4",
        "trainer.max_epochs=1",
    ]


def test_study_trains_each_sampler_and_logs_the_table(
    study_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = run_study([*study_args, "study.samplers=[none,undersample,class_weights]"])
    assert table["sampler"].tolist() == ["none", "undersample", "class_weights"]
    assert (table["status"] == "finished").all()
    seen = dict(zip(table["sampler"], table["images_seen"], strict=True))
    assert seen["undersample"] == 4  # 4 classes x 1 image x 1 epoch
    assert seen["none"] == seen["class_weights"] > seen["undersample"]
    assert table["worst_class_recall"].le(table["test_acc"] + 1e-9).all()
    printed = capsys.readouterr().out
    assert "| undersample" in printed and "worst_class_recall" in printed

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sampler_study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["sampler"] for r in children) == sorted(table["sampler"])
    assert parent.data.metrics["undersample/images_seen"] == 4
    folder = client.download_artifacts(parent.info.run_id, "", str(tmp_path / "down"))
    logged = pd.read_csv(Path(folder) / "sampler_study.csv")
    assert logged["sampler"].tolist() == table["sampler"].tolist()


def test_per_sampler_options_reach_that_sampler_only(study_args: list[str]) -> None:
    from fashion_sweeps.sampler_study import compose_configs

    args = [*study_args, "study.samplers=[over_under,none]", "study.options.over_under.per_class=7"]
    _, configs = compose_configs(args)
    assert configs["over_under"].sampler.per_class == 7
    assert "per_class" not in configs["none"].sampler and "study" not in configs["none"]


def test_a_failing_sampler_is_recorded_and_the_study_goes_on(study_args: list[str]) -> None:
    # per_class=0 is rejected only when the training split is sampled, inside the run.
    args = [*study_args, "study.samplers=[over_under,none]", "study.options.over_under.per_class=0"]
    table = run_study(args)
    assert table["status"].tolist() == ["failed", "finished"]
    assert pd.isna(table.loc[0, "test_acc"]) and table.loc[1, "test_acc"] >= 0


def test_unknown_sampler_is_a_clear_error_before_training(
    study_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*study_args, "study.samplers=[none,bogus]"]) == 2
    err = capsys.readouterr().err
    assert "Could not find 'sampler/bogus'" in err and "oversample" in err
    assert not (tmp_path / "study").exists()
