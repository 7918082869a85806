"""`fashion-sweeps report`: a sweep's runs -> one self-contained HTML page + Markdown, logged to the
stage parents; the best full run's model registered as champion."""

from __future__ import annotations

import base64
import io
import re

import pytest
from conftest import write_clothing
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import open_dict
from PIL import Image

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.sweeps.report import main
from fashion_sweeps.sweeps.stage_run import open_stage_run
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

CONDITIONS = (("adam", "0.01"), ("sgd", "0.001"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_clothing) -> dict:
    """A two-condition screen (1 epoch, no models logged) and its two full runs (2 epochs), tracked
    the way the sweep stages track them: parent per stage, children tagged sweep and stage."""

    tmp = tmp_path_factory.mktemp("sweep")
    root = write_clothing(tmp / "clothing", per_class=8, seed=1)
    store = tmp / "mlruns"

    def cfg(*overrides):
        with initialize_config_dir(str(CONF_DIR)):
            c = compose(
                "config",
                [
                    *tiny_clothing,
                    f"dataset.root={root}",
                    f"tracking.dir={store}",
                    "trainer.progress=lines",
                    *overrides,
                ],
            )
        return c

    full_runs = {}
    for stage, epochs, log_model in (("screen", 1, "false"), ("full", 2, "true")):
        base = cfg()
        parent = open_stage_run(base.tracking, "clothing", "tiny", stage)
        for optimizer, lr in CONDITIONS:
            c = cfg(
                f"optimizer={optimizer}",
                f"optimizer.lr={lr}",
                f"trainer.max_epochs={epochs}",
                f"tracking.log_model={log_model}",
                f"tracking.parent_run_id={parent.run_id}",
                "++tracking.tags.sweep=tiny",
                f"++tracking.tags.stage={stage}",
            )
            with open_dict(c):
                c.output_dir = str(tmp / "out" / stage / optimizer)
            full_runs[(stage, optimizer)] = train(c)
        parent.end()
    return {"uri": tracking_uri(cfg().tracking), "val_loss": full_runs, "tmp": tmp}


@pytest.fixture(scope="module")
def report(sweep) -> dict:
    out = sweep["tmp"] / "report"
    assert main(["tiny", "--tracking-uri", sweep["uri"], "--out", str(out)]) == 0
    return {
        "html": (out / "report.html").read_text(),
        "md": (out / "report.md").read_text(),
        "out": out,
    }


def test_html_holds_the_ranking_and_comparison_tables(report) -> None:
    html = report["html"].replace("<wbr>", "")  # headers may break after an underscore
    sections = re.findall(r"<h2>(.*?)</h2>", html)
    assert sections == [
        "Screen ranking",
        "Learning rate against val_loss",
        "Full runs",
        "Best model",
    ]
    ranking = html.split("<h2>Screen ranking</h2>")[1].split("<h2>")[0]
    for header in (
        "backbone",
        "head",
        "optimizer",
        "lr",
        "best_val_loss",
        "best_train_acc",
    ):
        assert f"<th>{header}</th>" in ranking
    assert ranking.count("<td>simple_cnn</td>") == 2
    comparison = html.split("<h2>Full runs</h2>")[1].split("<h2>")[0]
    for header in ("best_val_acc", "test_loss", "test_acc", "test_f1_weighted"):
        assert f"<th>{header}</th>" in comparison
    # The best model's per-class table (issue 5's evaluation/per_class.csv).
    best = html.split("<h2>Best model</h2>")[1]
    assert "<table" in best and "<td>Dress</td>" in best
    # As fastai interprets a model: its most confused class pairs and top losses.
    assert "<th>actual</th>" in best and "<th>count</th>" in best
    assert "Top losses: the test images of highest loss" in best


def test_html_is_self_contained_and_links_each_run_to_mlflow(report) -> None:
    """It loads nothing from elsewhere (opens offline); each table row links to its run in the
    MLflow UI (it had no links), by the run id it shows."""
    html = report["html"]
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 holds '/'
    links = re.findall(r'<a href="([^"]*)">([0-9a-f]{8})</a>', text)
    assert links and all(url.startswith("http://127.0.0.1:5000/#/runs/") for url, _ in links)
    assert all(url.rsplit("/", 1)[1].startswith(short) for url, short in links)
    text = re.sub(r'<a href="[^"]*">', "", text)
    assert not re.search(r"(https?:)?//[a-z0-9]", text, re.IGNORECASE)
    assert "href=" not in text and "@import" not in text and "url(" not in text
    sources = re.findall(r'src="([^"]*)"', html)
    # lr plot, bars, curves, two confusion matrices, gallery
    assert len(sources) == 6
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()


def test_markdown_twin_and_its_images(report) -> None:
    md = report["md"]
    assert "## Screen ranking" in md and "## Full runs" in md
    assert "| backbone" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 6
    assert all((report["out"] / link).is_file() for link in links)


def test_report_logged_to_each_stage_parent(sweep, report) -> None:
    client = MlflowClient(sweep["uri"])
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.run_kind = 'stage' and tags.sweep = 'tiny'",
    )
    assert len(parents) == 2
    for parent in parents:
        names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert {"report/report.html", "report/report.md", "report/images"} <= names


def test_best_full_run_is_the_champion(sweep, report) -> None:
    client = MlflowClient(sweep["uri"])
    champion = client.get_model_version_by_alias("fashion-classifier", "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags["stage"] == "full"
    best = min(
        (loss, optimizer)
        for (stage, optimizer), loss in sweep["val_loss"].items()
        if stage == "full"
    )
    assert run.data.tags["optimizer"] == best[1]


def test_unknown_sweep_names_the_known_ones(sweep, tmp_path, capsys) -> None:
    assert main(["nope", "--tracking-uri", sweep["uri"], "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "tiny" in err


def test_without_a_name_the_latest_sweep_is_reported(sweep, tmp_path, capsys) -> None:
    assert main(["--tracking-uri", sweep["uri"], "--out", str(tmp_path), "--no-register"]) == 0
    assert "Report of sweep 'tiny'" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()


def test_each_column_keeps_its_decimals_and_the_ui_follows_the_store() -> None:
    """Numbers came as `{:.4g}` (0.5, 1.235, 0.001 in one column); links need the UI's address."""
    import numpy as np
    import pandas as pd

    from fashion_sweeps.sweeps.report_pages import table_html
    from fashion_sweeps.sweeps.stored_sweep import ui_url

    table = pd.DataFrame({"lr": [0.1, 0.001], "val_loss": [0.5, 1.23456], "best_epoch": [3.0, np.nan],
                          "head": ["<fc>", "bn"]})  # fmt: skip
    cells = re.findall(r"<td>([^<]*)</td>", table_html(table, "http://x"))
    assert cells == ["0.1", "0.5000", "3", "&lt;fc&gt;", "0.001", "1.2346", "—", "bn"]
    assert ui_url("sqlite:////a/mlruns/mlflow.db") == "http://127.0.0.1:5000"
    assert (
        ui_url("https://user:secret@mlflow.example:8443/base/")
        == "https://mlflow.example:8443/base"
    )


def test_the_chance_level_reaches_the_full_runs_chart(sweep, monkeypatch) -> None:
    """The chart was to draw the chance level, but read a metric no run logs (`chance_acc`;
    runs log `test_chance_acc`), so it never drew it."""
    from mlflow.tracking import MlflowClient

    from fashion_sweeps.sweeps import report_content
    from fashion_sweeps.sweeps.stored_sweep import stage_parents, stage_runs

    drawn = {}
    original = report_content.comparison_figure
    monkeypatch.setattr(
        report_content,
        "comparison_figure",
        lambda *args: drawn.setdefault("chance", args[3]) and original(*args),
    )
    client = MlflowClient(sweep["uri"])
    runs = stage_runs(client, stage_parents(client, "tiny")["full"])
    report_content.full_sections(client, runs)
    assert drawn["chance"] == pytest.approx(runs[0].data.metrics["test_chance_acc"])
    assert 0 < drawn["chance"] < 1
