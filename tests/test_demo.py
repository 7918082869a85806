"""`make demo` delivers a real model: a frozen ImageNet Lite0 screen on the bundled sample whose
champion is well above chance (slow: the whole demo, about 2 minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fashion_sweeps
from mlflow.tracking import MlflowClient


@pytest.mark.slow
def test_demo_champion_beats_chance_by_far(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # One command: the screen, the full runs, and the report that registers the champion.
    fashion_sweeps(tmp_path, "sweep", "sweep=demo", f"tracking.dir={tmp_path / 'mlruns'}")
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("fashion-classifier", "champion")
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["test_chance_acc"] == 1 / 8
    assert metrics["test_acc"] >= 0.55 > metrics["test_majority_acc"]
    report = (tmp_path / "multirun/sweeps/clothing_sample-demo/report/report.md").read_text()
    assert "chance 12.5%" in report
