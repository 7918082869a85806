"""`fashion-sweeps predict`: folders in, one CSV row per image out; bad files get a row saying why."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import class_image
from omegaconf import OmegaConf
from PIL import Image
from test_model_logging import CLASSES, images, tiny_module

from fashion_sweeps.predict import main
from fashion_sweeps.tracking.model_logging import log_classifier
from fashion_sweeps.tracking.registry import register
from fashion_sweeps.tracking.runs import TrackedRun


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store whose `fashion-classifier@champion` is a tiny 16 px RGB model."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    run = TrackedRun.start(OmegaConf.create({"uri": uri}), "models")
    log_classifier(run, tiny_module().model, images(2))
    register(run.client, run.run_id)
    return uri


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Six photos (one in a sub-folder), a grey PNG, a corrupt JPEG and a text file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for i in range(5):
        class_image(i, rng, size=40).save(root / f"{i}.jpg")
    class_image(1, rng, size=24).save(root / "more" / "5.jpg")
    Image.new("L", (30, 50), 128).save(root / "grey.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_tags_a_folder_with_a_corrupt_file_and_a_grey_image(store, photos, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    code = main([str(photos), "--tracking-uri", store, "--out", str(out), "--top-k", "2"])
    assert code == 0

    table = {Path(r["path"]).name: r for r in rows(out)}
    assert set(table) == {
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "3.jpg",
        "4.jpg",
        "5.jpg",
        "grey.png",
        "broken.jpg",
    }
    assert "unreadable image" in table["broken.jpg"]["error"]
    assert table["broken.jpg"]["label_1"] == ""
    for name, row in table.items():
        if name == "broken.jpg":
            continue
        assert row["error"] == ""
        assert {row["label_1"], row["label_2"]} <= set(CLASSES)
        assert row["label_1"] != row["label_2"]
        assert 1 >= float(row["probability_1"]) >= float(row["probability_2"]) >= 0
    assert "1 unreadable" in capsys.readouterr().out


def test_rows_under_the_threshold_need_review(store, photos, tmp_path):
    first = tmp_path / "first.csv"
    main([str(photos), "--tracking-uri", store, "--out", str(first), "--top-k", "1"])
    top1 = sorted(float(r["probability_1"]) for r in rows(first) if not r["error"])
    threshold = (top1[2] + top1[3]) / 2  # some rows above, some below

    out = tmp_path / "reviewed.csv"
    main(
        [
            str(photos),
            "--tracking-uri",
            store,
            "--out",
            str(out),
            "--min-confidence",
            str(threshold),
        ]
    )
    tagged = [r for r in rows(out) if not r["error"]]
    assert [r["needs_review"] for r in tagged] == [
        str(float(r["probability_1"]) < threshold).lower() for r in tagged
    ]
    assert {r["needs_review"] for r in tagged} == {"true", "false"}
    assert {"label_3", "probability_3"} <= set(tagged[0])


def test_named_files_missing_ones_included(store, photos, tmp_path):
    out = tmp_path / "named.csv"
    missing = photos / "gone.jpg"
    main([str(photos / "0.jpg"), str(missing), "--tracking-uri", store, "--out", str(out)])
    table = rows(out)
    assert [Path(r["path"]).name for r in table] == ["0.jpg", "gone.jpg"]
    assert table[1]["error"] == "no such file"


def test_unknown_model_is_a_clear_error(store, photos, tmp_path, capsys):
    code = main(
        [
            str(photos),
            "--tracking-uri",
            store,
            "--model",
            "models:/nope@champion",
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "models:/nope@champion" in err and "fashion-sweeps report" in err


def test_a_grey_model_tags_colour_photos(store, photos, tmp_path):
    """A Fashion-MNIST-like model (1 channel) gets the photos converted to grey at its size."""
    run = TrackedRun.start(OmegaConf.create({"uri": store}), "models")
    uri = log_classifier(run, tiny_module(channels=1).model, images(2, channels=1))
    out = tmp_path / "grey.csv"
    assert main([str(photos), "--tracking-uri", store, "--model", uri, "--out", str(out)]) == 0
    tagged = [r for r in rows(out) if not r["error"]]
    assert len(tagged) == 7 and all(r["label_1"] in CLASSES for r in tagged)


def test_broken_links_get_a_row_and_linked_folders_are_read_once(store, photos, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    class_image(2, np.random.default_rng(1), size=20).save(other / "linked.jpg")
    (photos / "dead.jpg").symlink_to(photos / "nowhere.jpg")
    (photos / "to_other").symlink_to(other, target_is_directory=True)
    (photos / "more" / "loop").symlink_to(photos, target_is_directory=True)  # a cycle
    out = tmp_path / "links.csv"
    args = [str(photos), str(photos / "dead.jpg"), "--tracking-uri", store, "--out", str(out)]
    assert main([*args, "--follow-links"]) == 0
    table = rows(out)
    names = [Path(r["path"]).name for r in table]
    assert names.count("linked.jpg") == 1 and names.count("0.jpg") == 1
    dead = [r for r in table if Path(r["path"]).name == "dead.jpg"]
    assert len(dead) == 2 and all(r["error"] == "broken symbolic link" for r in dead)
    assert len(table) == 8 + 1 + 2  # the photos fixture's 8, the linked one, the dead link twice


def test_folder_links_that_leave_the_given_folders_are_not_followed(
    store, photos, tmp_path, caplog
):
    outside = tmp_path / "outside"
    outside.mkdir()
    class_image(2, np.random.default_rng(1), size=20).save(outside / "private.jpg")
    (photos / "escape").symlink_to(outside, target_is_directory=True)
    (photos / "root").symlink_to("/", target_is_directory=True)  # would tag the whole machine
    (photos / "more" / "back").symlink_to(photos / "more", target_is_directory=True)
    out = tmp_path / "inside.csv"
    with caplog.at_level("INFO", logger="fashion_sweeps.predict"):
        assert main([str(photos), "--tracking-uri", store, "--out", str(out)]) == 0
    names = [Path(r["path"]).name for r in rows(out)]
    assert "private.jpg" not in names and len(names) == 8  # the photos fixture's own
    assert "2 folder links that leave" in caplog.text and "--follow-links" in caplog.text


@pytest.mark.parametrize("where", ["a_file/predictions.csv", "a_folder"])
def test_an_unwritable_out_is_one_paragraph(store, photos, tmp_path, capsys, where):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    out = tmp_path / where
    assert main([str(photos), "--tracking-uri", store, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {out}" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1


def test_both_engines_tag_alike_and_the_closing_line_names_the_engine(
    store, photos, tmp_path, capsys
):
    tagged = {}
    for engine in ("torch", "openvino"):
        out = tmp_path / f"{engine}.csv"
        args = [str(photos), "--tracking-uri", store, "--out", str(out), "--engine", engine]
        assert main([*args, "--precision", "f32"]) == 0
        assert f"images/s, {engine} f32)" in capsys.readouterr().out
        tagged[engine] = rows(out)
    for ours, theirs in zip(tagged["torch"], tagged["openvino"], strict=True):
        assert ours["path"] == theirs["path"] and ours["label_1"] == theirs["label_1"]
        if ours["probability_1"]:
            assert float(ours["probability_1"]) == pytest.approx(
                float(theirs["probability_1"]), abs=2e-4
            )


def test_the_default_csv_is_named_in_help_and_the_closing_line_says_it_was_replaced(
    store, photos, tmp_path, monkeypatch, capsys
):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "default predictions.csv" in " ".join(capsys.readouterr().out.split())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "predictions.csv").write_text("an earlier run's rows\n")
    assert main([str(photos), "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "Rows in predictions.csv (replaced the earlier file; --out to choose another)" in out


def test_the_served_model_takes_photo_files_and_gives_predicts_probabilities(
    store, photos, tmp_path, monkeypatch
):
    """A 400x534 photo became a 3 MB JSON list of integers, and the served model's probability
    differed from `predict`'s (arrays resized by torch, files by PIL with draft mode): files as
    bytes or base64 text go through predict's own decode."""
    import base64

    import mlflow.pyfunc
    import pandas as pd

    from fashion_sweeps.inference import engines

    monkeypatch.setenv(engines.ENGINE_ENV, "torch")
    names = ["0.jpg", "1.jpg", "grey.png"]
    out = tmp_path / "tags.csv"
    assert main([*(str(photos / n) for n in names), "--tracking-uri", store, "--out", str(out),
                 "--engine", "torch"]) == 0  # fmt: skip
    tagged = {Path(r["path"]).name: r for r in rows(out)}
    model = mlflow.pyfunc.load_model("models:/fashion-classifier@champion")
    files = [(photos / n).read_bytes() for n in names]
    text = [base64.b64encode(f).decode("ascii") for f in files]
    for request in (files, text, pd.DataFrame({"image": text})):
        served = model.predict(request)
        for name, (_, row) in zip(names, served.iterrows(), strict=True):
            assert row["label"] == tagged[name]["label_1"]
            assert row["probability"] == pytest.approx(
                float(tagged[name]["probability_1"]), abs=1e-4
            )
    with pytest.raises(ValueError, match="Image 1 of the request is not a JPEG or PNG file"):
        model.predict([files[0], b"not an image"])


def test_the_endpoint_answers_base64_photos_and_names_a_bad_one(store, photos) -> None:
    """`make serve`'s scoring app, as the docs' curl example calls it."""
    import base64

    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    app = scoring_server.init(mlflow.pyfunc.load_model("models:/fashion-classifier@champion"))
    photo = base64.b64encode((photos / "0.jpg").read_bytes()).decode("ascii")
    answer = TestClient(app).post("/invocations", json={"inputs": [photo, photo]})
    assert answer.status_code == 200
    assert [set(p) >= {"label", "probability"} for p in answer.json()["predictions"]] == [True] * 2
    bad = base64.b64encode(b"not an image").decode("ascii")
    answer = TestClient(app).post("/invocations", json={"inputs": [photo, bad]})
    assert answer.status_code == 400
    assert "Image 1 of the request is not a JPEG or PNG file" in answer.json()["message"]
