"""`make bench`: the named sizes, the screen's arithmetic (a sampled uncached screen
extrapolated to the grid, the cached screen's floor, teardown), the table judging each figure
against the issue's target, the engines bench end to end on a few tiny synthetic photos, and the
whole bench end to end on synthetic photos (slow: two screen processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import engines, report
from benchmarks import screen_figures as figures
from benchmarks.run import parse_args

ROOT = Path(__file__).resolve().parent.parent


def results(screen_ratio: float, data_ratio: float, tune_ratio: float, teardown: float) -> dict:
    trials = {
        "startup_s": 0.3,
        "teardown_s": teardown,
        "between_trials_s": 0.2,
        "trial_wall_s": 2.0,
        "trials_wall_total_s": 24.0,
        "feature_cache_s_max": 3.0,
    }
    return {
        "settings": {
            "data": "synthetic",
            "images": 60,
            "available_images": 600,
            "image_size": 32,
            "backbone": "mobilenet_v2",
            "finetune_backbone": "mobilenet_v2",
            "epochs": 3,
            "cpus": 2,
            "torch_threads": 2,
            "when": "now",
            "load_average_before": [0.5, 0.5, 0.5],
        },
        "screen": {
            "conditions": 12,
            "uncached_s": 100.0 * screen_ratio,
            "cached_s": 100.0,
            "ratio": screen_ratio,
            "same_ranking": True,
            "max_val_loss_difference": 1e-7,
            "trials_cached": trials,
            "trials_uncached": trials,
        },
        "data": {
            "jpeg_epoch2plus": 100.0,
            "cached_epoch2plus": 100.0 * data_ratio,
            "ratio": data_ratio,
            "cache_build_s": 1.0,
            "cache_load_s": 0.1,
            "images": 60,
        },
        "finetune": {"bare_best": 10.0, "framework_best": 10 * tune_ratio, "ratio": tune_ratio},
    }


def met_column(markdown: str) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    return [row.rstrip(" |").rsplit("|", 1)[-1].strip() for row in rows[1:]]


def test_table_judges_every_target(tmp_path: Path) -> None:
    good = report.write(results(25.0, 50.0, 0.95, 0.8), tmp_path / "good").read_text()
    assert met_column(good) == ["yes"] * 5
    bad = report.write(results(5.0, 50.0, 0.8, 1.7), tmp_path / "bad").read_text()
    assert met_column(bad) == ["**no**", "yes", "yes", "**no**", "**no**"]
    assert json.loads((tmp_path / "bad" / "results.json").read_text())["screen"]["ratio"] == 5.0
    assert "Projection from these parts to all 600 photos" in bad


def test_size_real_is_the_clothing_screen_at_full_scale() -> None:
    args = parse_args(["--size", "real"])
    assert (args.images, args.image_size, args.only) == (0, 224, "engines,screen")
    assert args.backbone == "efficientnet_lite0,efficientnet_lite2"
    assert (args.heads, args.optimizers, args.lrs) == ("fc,batchnorm", "adam,sgd", "0.1,0.01,0.001")
    assert (args.epochs, args.uncached_conditions) == (3, 1)
    # A flag given wins over the size's value; the others stay the size's.
    args = parse_args(["--size=real", "--images=300", "--uncached-conditions=0"])
    assert (args.images, args.uncached_conditions, args.image_size) == (300, 0, 224)
    assert parse_args(["--size=real", "--image-size=native"]).image_size == "native"


def test_size_small_is_the_default() -> None:
    args = parse_args([])
    assert (args.size, args.images, args.image_size) == ("small", 500, 128)
    assert (args.backbone, args.only, args.uncached_conditions) == (
        "efficientnet_lite0",
        "data,finetune,screen,engines",
        0,
    )
    assert (args.engine_images, args.screen_engines) == (128, "openvino")
    assert args.engine_backbones == "efficientnet_lite0,efficientnet_lite2"


def test_engine_flags_come_from_the_size_unless_given() -> None:
    args = parse_args(["--size=real"])
    assert (args.engine_images, args.screen_engines) == (1500, "torch,openvino")
    assert args.engine_backbones == "efficientnet_lite0,efficientnet_lite2"
    assert (args.engine_image_size, args.compile_timeout) == (None, 180.0)
    assert (args.engine_rounds, args.engine_steps) == (2, 5)
    args = parse_args(
        [
            "--size=real",
            "--only=engines",
            "--engine-images=40",
            "--engine-backbones=efficientnet_lite0",
            "--engine-image-size=64",
            "--screen-engines=openvino,torch",
            "--compile-timeout=0",
        ]
    )
    assert (args.engine_images, args.engine_backbones) == (40, "efficientnet_lite0")
    assert (args.engine_image_size, args.screen_engines, args.compile_timeout) == (
        64,
        "openvino,torch",
        0.0,
    )
    # The engines bench runs each backbone at its own resolution: `native` is no conflict.
    assert parse_args(["--only=engines,screen", "--image-size=native"]).image_size == "native"


@pytest.mark.parametrize(
    "argv",
    [
        ["--images=30"],
        ["--only=screen,gpu"],
        ["--uncached-conditions=5"],  # no sub-grid of the first values holds 5
        ["--uncached-conditions=13"],
        ["--image-size=native"],  # data and fine-tuning benches need one size
        ["--image-size=big"],
        ["--engine-images=8"],
        ["--screen-engines=openvino,gpu"],
        ["--screen-engines=torch,torch"],
        ["--only=engines", "--engine-backbones=efficientnet_lite9"],
        # No native resolution: the engines bench needs a size for it.
        ["--only=engines", "--engine-backbones=simple_cnn"],
        ["--only=engines", "--engine-image-size=8"],
        ["--only=engines", "--compile-timeout=-1"],
        ["--only=engines", "--engine-steps=0"],
    ],
)
def test_bad_sizes_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_the_uncached_sample_is_a_sub_grid_of_the_first_values() -> None:
    grid = (["fc", "batchnorm"], ["adam", "sgd"], ["0.1", "0.01", "0.001"])
    assert figures.sample_grid(*grid, 1) == (["fc"], ["adam"], ["0.1"])
    assert figures.sample_grid(*grid, 2) == (["fc"], ["adam"], ["0.1", "0.01"])
    assert figures.sample_grid(*grid, 4) == (["fc"], ["adam", "sgd"], ["0.1", "0.01"])
    assert figures.sample_grid(*grid, 0) == figures.sample_grid(*grid, 12) == tuple(map(list, grid))
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 4, 6, 8, 12\]"):
        figures.sample_grid(*grid, 5)


def trial(backbone: str, wall: float, **metrics: float | str | None) -> dict:
    record = {
        "condition": f"{backbone}/fc/adam/{wall}",
        "backbone": backbone,
        "status": "finished",
        "wall_s": wall,
    }
    return record | {
        "startup_s": None,
        "teardown_s": None,
        "image_cache_s": None,
        "feature_cache_s": None,
        **metrics,
    }


def test_extrapolation_adds_each_missing_condition_at_its_backbones_time() -> None:
    # The first trial decoded the photos (10 s): that is paid once, not per condition.
    sampled = [trial("lite0", 30.0, image_cache_s=10.0), trial("lite2", 50.0)]
    full = figures.extrapolate(100.0, sampled, {"lite0": 12, "lite2": 12}, gap_s=1.0)
    assert full["per_backbone"]["lite0"]["per_condition_s"] == 20.0
    assert full["total_s"] == 100.0 + 11 * (20.0 + 1.0) + 11 * (50.0 + 1.0)
    assert full["extrapolated"] and full["measured_conditions"] == 2
    # Nothing missing: the measured wall time; no gap measured (one trial): counts 0.
    whole = figures.extrapolate(100.0, sampled, {"lite0": 1, "lite2": 1}, gap_s=float("nan"))
    assert whole["total_s"] == 100.0 and not whole["extrapolated"]
    assert figures.extrapolate(80.0, sampled[:1], {"lite0": 3}, float("nan"))["total_s"] == 120.0
    with pytest.raises(ValueError, match="lite2"):
        figures.extrapolate(100.0, sampled[:1], {"lite0": 12, "lite2": 12}, 1.0)


def cached_trials() -> list[dict]:
    """Two backbones x two conditions: the first of each computes its features (the very first
    also decodes the photos), the second reads them; one lite2 condition diverged."""
    return [
        trial("lite0", 40.0, startup_s=35.0, teardown_s=0.3, image_cache_s=5.0,
              image_cache="miss", feature_cache_s=28.0),
        trial("lite0", 4.0, startup_s=1.0, teardown_s=0.2, image_cache_s=0.1,
              image_cache="hit", feature_cache_s=0.1),
        trial("lite2", 70.0, startup_s=62.0, teardown_s=0.4, image_cache_s=0.1,
              image_cache="hit", feature_cache_s=60.0),
        trial("lite2", 3.0, image_cache_s=0.1, image_cache="hit", feature_cache_s=0.5),
    ]  # fmt: skip


def test_floor_is_decode_plus_a_forward_pass_per_backbone_plus_head_trainings() -> None:
    least = figures.floor(cached_trials())
    assert least["decode_s"] == 5.0
    lite0, lite2 = least["per_backbone"]["lite0"], least["per_backbone"]["lite2"]
    assert (lite0["forward_s"], lite0["heads_s"]) == pytest.approx((28.0, 4.7 + 2.8))
    # The diverged trial logged no start-up or teardown: its caches' time stands in.
    assert (lite2["forward_s"], lite2["heads_s"]) == pytest.approx((60.0, 7.6 + 2.4))
    assert least["total_s"] == pytest.approx(5.0 + 28.0 + 7.5 + 60.0 + 10.0)
    versus = figures.against_floor(165.75, least["total_s"], trials=4)
    assert versus["ratio"] == pytest.approx(1.5) and versus["overhead_per_trial_s"] == 13.8125


def test_teardown_is_judged_by_its_worst_trial() -> None:
    summary = figures.teardown(cached_trials())
    assert (summary["median_s"], summary["max_s"], summary["trials"]) == (0.3, 0.4, 3)
    assert summary["under_limit"] is True
    assert figures.teardown(cached_trials(), limit=0.35)["under_limit"] is False
    assert figures.teardown([trial("lite0", 1.0)])["under_limit"] is None


def test_rankings_are_compared_on_the_conditions_both_screens_ran() -> None:
    cached = [("a", 0.5), ("b", 0.6), ("c", 0.7), ("d", float("inf"))]
    same = figures.compare_rankings([("a", 0.5 + 1e-7), ("c", 0.7)], cached)
    assert same["same_ranking"] and same["compared_conditions"] == 2
    assert same["max_val_loss_difference"] == pytest.approx(1e-7)
    assert not figures.compare_rankings([("c", 0.4), ("a", 0.5)], cached)["same_ranking"]


def test_an_extrapolated_screen_says_so_in_the_table(tmp_path: Path) -> None:
    sampled = [trial("lite0", 30.0, image_cache_s=10.0), trial("lite2", 50.0)]
    cached = cached_trials()
    figures_ = figures.summary(1000.0, 165.75, sampled, cached, gap_s=1.0)
    assert figures_["uncached_s"] == 1000.0 + 20.0 + 1.0 + 50.0 + 1.0
    assert figures_["ratio"] == pytest.approx(1072.0 / 165.75)
    data = results(1.0, 50.0, 0.95, 0.2)
    data["screen"].update(figures_, compared_conditions=2, same_ranking=True)
    text = report.write(data, tmp_path).read_text()
    assert (
        "1,072.0 (no feature cache; extrapolated from 2 of 4 conditions, measured 1,000.0)" in text
    )
    assert "| ~6.5x (estimated) |" in text
    assert "Same ranking of the conditions (the 2 run on both sides)" in text
    assert "| 110.5 (floor: decode + one forward pass per photo per backbone" in text
    assert "| 1.50x |" in text and "165.8 (+13.81 s per trial)" in text
    assert "| median 0.30 | max 0.40 |  | < 0.5 s each | yes |" in text
    assert "**extrapolated from 2 of 4 conditions**" in text
    assert "lite2 50.0 s a condition (measured on 1) x 2 conditions" in text
    assert "lite0: forward pass 28.0 s + 2 head trainings 7.5 s" in text
    assert "Caution" not in text
    # A sampled condition that diverged stopped early: the extrapolation says it is too low.
    sampled[1]["status"] = "diverged"
    data["screen"].update(figures.summary(1000.0, 165.75, sampled, cached, gap_s=1.0))
    text = report.write(data, tmp_path).read_text()
    assert "**Caution**: sampled condition(s) lite2/fc/adam/50.0 did not finish" in text


def engines_results() -> dict:
    """Results of the engines bench on one backbone, as engines.py writes them."""
    load = {"load_average_before": [1.0, 1.0, 1.0], "load_average_after": [1.5, 1.0, 1.0]}

    def engine_rows(rates: list[float], **more: object) -> list[dict]:
        names = [("torch", "f32"), ("torch", "bf16"), ("openvino", "f32"), ("openvino", "bf16")]
        return [
            {
                "backbone": "efficientnet_lite0",
                "image_size": 224,
                "engine": engine,
                "precision": precision,
                "ran": f"{engine} {precision}",
                "fallback": False,
                "images_per_s": rate,
                "x_torch_f32": rate / rates[0],
                "compile_s": 4.0 if engine == "openvino" else 0.0,
                **more,
                **load,
            }
            for (engine, precision), rate in zip(names, rates, strict=True)
        ]

    tune = [
        {"backbone": "efficientnet_lite0", "image_size": 160, "batch": 32, "variant": v,
         "images_per_s": r, "x_fp32": r / 10.0, "compile_s": 0.0, **load}
        for v, r in (("fp32", 10.0), ("channels_last", 12.0), ("bf16", 15.0),
                     ("bf16 + channels_last", 21.0))
    ]  # fmt: skip
    tune.append(
        {"backbone": "efficientnet_lite0", "image_size": 160, "batch": 32,
         "variant": "torch.compile(bf16 + channels_last)", "images_per_s": 25.0,
         "eager_images_per_s": 20.0, "x_eager": 1.25, "x_fp32": 2.1 * 1.25, "compile_s": 95.0,
         **load}
    )  # fmt: skip
    predict = engine_rows([50.0, 80.0, 150.0, 400.0], top1_agreement=0.99)
    for row in predict:
        row["max_probability_difference"] = 0.01
    predict[2].update(fallback=True, ran="torch f32", fallback_reason="OpenVINO cannot run it")
    predict[2].update(images_per_s=None, x_torch_f32=None, rates=[])  # not timed again
    return {
        "settings": {"images": 1500, "image_size": "native", "batch_size": 64, "rounds": 2},
        "notes": [],
        "features": engine_rows([50.0, 90.0, 200.0, 500.0]),
        "predict": predict,
        "probe": [
            {"backbone": "efficientnet_lite0", "engine": e, "precision": p, "accuracy": a, **load}
            for e, p, a in (("torch", "f32", 0.8), ("openvino", "bf16", 0.795))
        ],
        "decode": [
            {"method": m, "image_size": 224, "images_per_s": r, "x_without_draft": r / 100, **load}
            for m, r in (("PIL without draft (before)", 100.0), ("decode_files, draft", 180.0))
        ],
        "finetune": tune,
    }


def test_the_engines_tables_give_every_part(tmp_path: Path) -> None:
    data = results(25.0, 50.0, 0.95, 0.2)
    data["engines"] = engines_results()
    text = report.write(data, tmp_path).read_text()
    assert met_column(text.split("## Inference engines")[0]) == ["yes"] * 5  # rows 1-4 as before
    assert (
        "| efficientnet_lite0 (224 px) | openvino bf16 | 500.0 | 10.00x | 4.0 | 1.0 -> 1.5 |"
        in text
    )
    assert "| efficientnet_lite0 (224 px) | torch f32 | 50.0 | 1.00x | — | 1.0 -> 1.5 |" in text
    assert "| openvino f32 (ran torch f32: fallback) | n/a: as torch f32 | n/a |" in text
    assert "**Fell back to PyTorch** (predict: efficientnet_lite0 openvino f32" in text
    assert "| efficientnet_lite0 | openvino bf16 | 79.5% |" in text
    assert "| decode_files, draft | 180.0 | 1.80x |" in text
    assert "| torch.compile(bf16 + channels_last) | 25.0 | 2.62x | 95.0 |" in text
    assert "1.25x those" in text
    # A compile that was stopped says why.
    data["engines"]["finetune"][-1] = {"variant": "torch.compile(bf16)", "error": "took over 180 s"}
    assert (
        "| torch.compile(bf16) | n/a: took over 180 s | n/a | — | n/a |"
        in report.write(data, tmp_path).read_text()
    )


def test_the_cached_screen_per_engine_is_tabled_beside_the_first(tmp_path: Path) -> None:
    data = results(25.0, 50.0, 0.95, 0.2)
    side = {
        "ran": ["torch f32"],
        "forward_s": {"efficientnet_lite0": 100.0},
        "same_ranking": True,
        "max_val_loss_difference": 0.0,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [1.2, 1.0, 1.0],
    }
    data["screen"]["engine"] = "torch"
    data["screen"]["by_engine"] = {
        "torch": {**side, "cached_s": 300.0, "x_first": 1.0, "ratio": 25.0},
        "openvino": {**side, "ran": ["openvino bf16"], "forward_s": {"efficientnet_lite0": 20.0},
                     "cached_s": 150.0, "x_first": 2.0, "ratio": 50.0},
    }  # fmt: skip
    text = report.write(data, tmp_path).read_text()
    assert (
        "| torch (ran torch f32) | 300.0 | 1.00x | 25.00x | efficientnet_lite0 100.0 | yes" in text
    )
    assert "| openvino (ran openvino bf16) | 150.0 | 2.00x | 50.00x |" in text
    # A later engine's screen that failed leaves the others' figures.
    data["screen"]["by_engine"]["openvino"] = {"error": "The screen bench-cached-openvino failed"}
    text = report.write(data, tmp_path).read_text()
    assert "| openvino | failed: The screen bench-cached-openvino failed |" in text


def test_the_engines_bench_runs_end_to_end_on_a_few_synthetic_photos(tmp_path: Path) -> None:
    """Every part on 24 tiny photos at 32 px, with a small CNN: EfficientNet-Lite0's OpenVINO
    compiles alone would double the time (its conversion: tests/test_inference.py; its native
    resolutions: the size tests above)."""
    out = tmp_path / "bench"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--only=engines",
        "--synthetic",
        "--images=60",
        "--engine-images=24",
        "--engine-backbones=simple_cnn",  # no native resolution: --engine-image-size
        "--engine-image-size=32",
        "--finetune-backbone=simple_cnn",
        "--engine-steps=1",
        "--compile-timeout=0",  # its child process: the next test
        f"--out={out}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bench = json.loads((out / "results.json").read_text())["engines"]
    expected = [("torch", "f32"), ("torch", "bf16"), ("openvino", "f32"), ("openvino", "bf16")]
    if not bench["settings"]["cpu_bf16"]:
        expected = [e for e in expected if e[1] == "f32"]
        assert any("no bf16" in note for note in bench["notes"])
    for part in ("features", "predict", "probe"):
        assert [(r["engine"], r["precision"]) for r in bench[part]] == expected, part
    assert not any(row["fallback"] for row in bench["features"])  # OpenVINO converts it
    for row in bench["features"] + bench["predict"]:
        if row["fallback"]:  # the pass of the engine it fell back to: not timed again
            assert row["images_per_s"] is None and row["rates"] == [] and row["fallback_reason"]
        else:
            assert row["images_per_s"] > 0 and len(row["rates"]) == 2
        assert row["load_average_before"] and row["load_average_after"]
    assert bench["features"][0]["x_torch_f32"] == 1.0
    assert all(r["compile_s"] > 0 for r in bench["features"] if r["engine"] == "openvino")
    assert all(r["accuracy"] is None and "synthetic" in r["why"] for r in bench["probe"])
    assert {r["top1_agreement"] for r in bench["predict"][:1]} == {1.0}
    assert [r["method"] for r in bench["decode"]] == [
        "PIL without draft (before)",
        "decode_files, draft",
        "decode_files, draft, 2 workers",
    ]
    assert bench["decode"][2]["pool_forced"] and bench["decode"][0]["x_without_draft"] == 1.0
    variants = [r["variant"] for r in bench["finetune"]]
    assert variants[0] == "fp32" and variants[-1].startswith("torch.compile(")
    assert bench["finetune"][0]["x_fp32"] == 1.0
    assert bench["finetune"][-1]["error"] == "not run (--compile-timeout 0)"
    text = (out / "results.md").read_text()
    for title in ("5.1 Frozen features", "5.2 Predict", "5.3 Probe", "5.4 Decode", "5.5 Fine"):
        assert f"### {title}" in text
    assert "n/a (synthetic photos" in text and "| simple_cnn (32 px) | torch f32 |" in text


def child(tmp_path: Path, code: str, timeout: float = 30.0) -> dict:
    """engines.run_child on a stand-in for the torch.compile child running `code`."""
    return engines.run_child([sys.executable, "-c", code], tmp_path / "child.log", timeout)


def test_the_compile_child_gives_its_figures_or_why_there_are_none(tmp_path: Path) -> None:
    events = [
        {"event": "started"},
        {"event": "compiled", "seconds": 2.0},
        {"event": "done", "eager": [10.0, 12.0], "compiled": [15.0, 14.0]},
    ]
    say = "".join(f"print({json.dumps(json.dumps(e))}, flush=True); " for e in events)
    figures_ = child(tmp_path, "print('compiling...'); print(7); " + say)
    assert figures_ == {
        "images_per_s": 15.0,
        "rates": [15.0, 14.0],
        "eager_images_per_s": 12.0,
        "eager_rates": [10.0, 12.0],
        "x_eager": 1.25,
        "compile_s": 2.0,
    }
    # Compiling longer than the timeout: stopped, with its process group.
    start = time.monotonic()
    slow = child(tmp_path, say.split("; ")[0] + "; import time; time.sleep(60)", timeout=0.5)
    assert "compiling took over 0.5 s: stopped" in slow["error"]
    assert time.monotonic() - start < 20
    # A child that fails says how, from the end of its log.
    failed = child(tmp_path, "import sys; print('no compiler', file=sys.stderr); sys.exit(3)")
    assert failed["error"].startswith("failed (exit 3) before 'started': no compiler")


@pytest.mark.slow
def test_bench_runs_end_to_end_on_synthetic_photos(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--synthetic",
        "--only=data,finetune,screen",  # the engines bench has its own test
        "--images=200",  # the fine-tuning bench times batches after the first: it needs two
        "--image-size=16",
        # Two backbones, the uncached screen on one condition of each: extrapolated.
        "--backbone=efficientnet_lite0,efficientnet_lite2",
        "--uncached-conditions=1",
        "--epochs=1",
        "--heads=fc",
        "--optimizers=adam",
        "--lrs=0.01,0.001",
        "--load-epochs=2",
        "--repeats=1",
        f"--out={out}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    screen = results["screen"]
    assert (screen["conditions"], screen["conditions_uncached"]) == (4, 2)
    assert screen["extrapolated"] and screen["uncached_s"] > screen["uncached_measured_s"]
    assert screen["same_ranking"] and screen["compared_conditions"] == 2
    assert set(screen["floor"]["per_backbone"]) == {"efficientnet_lite0", "efficientnet_lite2"}
    assert screen["floor"]["total_s"] > 0 and screen["teardown_cached"]["trials"] == 4
    assert "extrapolated from 2 of 4 conditions" in done.stdout
    assert results["data"]["cache_status"] == ["miss", "hit"]
    assert results["finetune"]["ratio"] > 0 and results["profile"]["steps"]
    assert "| 2. Data loading" in done.stdout
    # The size's one screen engine (OpenVINO) filled the single-screen figures.
    assert screen["engine"] == "openvino" and list(screen["by_engine"]) == ["openvino"]
    assert screen["by_engine"]["openvino"]["cached_s"] == screen["cached_s"]


def test_the_memory_bench_names_its_data_sets_and_compares_their_peaks() -> None:
    from benchmarks import memory

    roots = memory.parse_roots("clothing=a/b,fashion_product=/c")
    assert {k: str(v) for k, v in roots.items()} == {"clothing": "a/b", "fashion_product": "/c"}
    with pytest.raises(ValueError, match="NAME=PATH with NAME one of"):
        memory.parse_roots("fmnist=x")
    gib = 1024**3
    row = {"dataset": "clothing", "images": 5073, "image_size": 224, "exit_code": 0,
           "peak_rss_bytes": 2 * gib, "seconds": 60.0, "cache_bytes": gib,
           "load_before": [1.0], "load_after": [1.5], "log": "x"}  # fmt: skip
    big = {**row, "dataset": "fashion_product", "images": 43003, "peak_rss_bytes": 3 * gib}
    text = "\n".join(memory.memory_table([row, big]))
    assert "| clothing | 5,073 | 224 px | 2.00 GB | 1.00x | 60 s | 1.00 GB | 1.0 -> 1.5 |" in text
    assert "| fashion_product | 43,003 | 224 px | 3.00 GB | 1.50x |" in text
    failed = "\n".join(memory.memory_table([row, {**big, "exit_code": 137}]))
    assert "| fashion_product | failed (exit 137): see x |  |  |  |  |  | 1.0 -> 1.5 |" in failed
    # A first size that failed is no reference: the ratios are to the first that ran.
    first_failed = "\n".join(memory.memory_table([{**row, "exit_code": 137}, big]))
    assert "| fashion_product | 43,003 | 224 px | 3.00 GB | 1.00x |" in first_failed
