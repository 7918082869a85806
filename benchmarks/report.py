"""`benchmarks/results.json` and its Markdown table, with the issue's targets checked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import memory
from fashion_sweeps import markdown

TARGETS = {"screen": 20.0, "data": 10.0, "finetune": 0.9, "overhead_s": 1.0}


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _pixels(size: int | str) -> str:
    return "each backbone's native resolution" if size == "native" else f"{size} px"


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "n/a"


def overhead(screen: dict[str, Any]) -> tuple[float, float]:
    """(start -> first step, last step -> run closed), median seconds over the cached screen's
    trials; the start includes the launcher's gap between one trial and the next."""
    trials = screen["trials_cached"]
    between = trials["between_trials_s"] if math.isfinite(trials["between_trials_s"]) else 0.0
    return trials["startup_s"] + between, trials["teardown_s"]


def _ratio_row(
    measure: str, baseline: str, framework: str, ratio: float, target: str, digits: int = 1
) -> list[str]:
    """A measure judged by its ratio to the baseline against TARGETS[target]."""
    ok = _mark(ratio >= TARGETS[target])
    return [measure, baseline, framework, f"{_num(ratio, digits)}x", f">= {TARGETS[target]:g}x", ok]


def screen_rows(results: dict[str, Any]) -> list[list[str]]:
    """Row 1 (wall times, ratio; the uncached side's extrapolated when it ran a sample), the
    rankings, and the cached screen against its floor when measured."""
    screen = results["screen"]
    grid = f"{screen['conditions']} conditions x {results['settings']['epochs']} epoch(s)"
    uncached = f"{_num(screen['uncached_s'])} (no feature cache)"
    ratio = _ratio_row(
        f"1. Frozen-backbone screen, {grid} (wall s)",
        uncached,
        f"{_num(screen['cached_s'])} (feature cache)",
        screen["ratio"],
        "screen",
    )
    if screen.get("extrapolated"):
        measured = screen["conditions_uncached"]
        ratio[1] = (
            f"{_num(screen['uncached_s'])} (no feature cache; extrapolated from {measured} of "
            f"{screen['conditions']} conditions, measured {_num(screen['uncached_measured_s'])})"
        )
        ratio[3] = f"~{ratio[3]} (estimated)"
    compared = screen.get("compared_conditions", screen["conditions"])
    same = "1. Same ranking of the conditions" + (
        f" (the {compared} run on both sides)" if compared < screen["conditions"] else ""
    )
    difference = f"max val_loss difference {screen['max_val_loss_difference']:.2g}"
    rows = [ratio, [same, "", difference, "", "identical", _mark(screen["same_ranking"])]]
    if "floor" in screen:
        versus = screen["cached_vs_floor"]
        rows.append(
            [
                "1. Cached screen vs its floor (wall s)",
                f"{_num(screen['floor']['total_s'])} (floor: decode + one forward pass per "
                "photo per backbone + head trainings)",
                f"{_num(screen['cached_s'])} (+{_num(versus['overhead_per_trial_s'], 2)} s "
                "per trial)",
                f"{_num(versus['ratio'], 2)}x",
                "",
                "—",
            ]
        )
    return rows


def overhead_rows(screen: dict[str, Any]) -> list[list[str]]:
    """Row 4: the cached screen's median per-trial overhead; its teardown, median and max,
    against TEARDOWN_LIMIT_S."""
    start, end = overhead(screen)
    limit = TARGETS["overhead_s"]
    rows = [
        [
            "4. Per-trial overhead, median of the cached screen (s)",
            f"start -> first step {_num(start, 2)}",
            f"last step -> run closed {_num(end, 2)}",
            "",
            f"<= {limit:g} s each",
            _mark(start <= limit and end <= limit),
        ]
    ]
    teardown = screen.get("teardown_cached")
    if teardown:
        rows.append(
            [
                "4. Teardown of a screen trial (no model logged), cached screen (s)",
                f"median {_num(teardown['median_s'], 2)}",
                f"max {_num(teardown['max_s'], 2)}",
                "",
                f"< {teardown['limit_s']:g} s each",
                _mark(teardown["under_limit"]),
            ]
        )
    return rows


def table(results: dict[str, Any]) -> str:
    header = ["measure", "baseline", "this framework", "ratio", "target", "met"]
    rows = []
    screen, data, tune = results.get("screen"), results.get("data"), results.get("finetune")
    if screen:
        rows += screen_rows(results)
    if data:
        rows.append(
            _ratio_row(
                "2. Data loading, best of epochs 2+ (images/s)",
                f"{_num(data['jpeg_epoch2plus'])} (JPEG decode each epoch)",
                f"{_num(data['cached_epoch2plus'])} (decode-once cache)",
                data["ratio"],
                "data",
            )
        )
    if tune:
        rows.append(
            _ratio_row(
                "3. Fine-tuning, one epoch (images/s)",
                f"{_num(tune['bare_best'])} (bare PyTorch loop)",
                f"{_num(tune['framework_best'])} (Lightning + metrics + MLflow)",
                tune["ratio"],
                "finetune",
                digits=2,
            )
        )
    if screen:
        rows += overhead_rows(screen)
    return "\n".join(markdown.table(header, rows)) if rows else ""


def _measured(screen: dict[str, Any]) -> float:
    """The uncached screen process's measured wall time (of the sample, when it ran one)."""
    return screen.get("uncached_measured_s", screen["uncached_s"])


def extrapolation_lines(screen: dict[str, Any]) -> list[str]:
    """How the uncached screen's wall time was extrapolated from its sample, if it was."""
    full = screen.get("uncached_extrapolation")
    if not full or not full["extrapolated"]:
        return []
    parts = "; ".join(
        f"{backbone} {_num(b['per_condition_s'])} s a condition (measured on {b['measured']}) "
        f"x {b['conditions']} conditions"
        for backbone, b in full["per_backbone"].items()
    )
    lines = [
        f"- Uncached screen **extrapolated from {full['measured_conditions']} of "
        f"{full['conditions']} conditions**: measured {_num(full['measured_s'])} s, plus each "
        f"condition not run at its backbone's measured time (wall minus the photos' one-off "
        f"decode) and the launcher's gap ({_num(full['gap_s'], 2)} s): {parts}; "
        f"= {_num(full['total_s'])} s. The screen ratio is therefore an estimate."
    ]
    unfinished = [c for b in full["per_backbone"].values() for c in b.get("unfinished", [])]
    if unfinished:
        lines[0] += (
            f" **Caution**: sampled condition(s) {', '.join(unfinished)} did not finish "
            "(diverged or failed: stopped early), so the extrapolation is too low; sample others "
            "(reorder `--heads`, `--optimizers`, `--lrs`)."
        )
    return lines


def floor_lines(screen: dict[str, Any]) -> list[str]:
    """The cached screen's floor, part by part, and what it spent beyond it."""
    floor = screen.get("floor")
    if not floor:
        return []
    parts = "; ".join(
        f"{backbone}: forward pass {_num(b['forward_s'])} s + {b['trials']} head trainings "
        f"{_num(b['heads_s'])} s"
        for backbone, b in floor["per_backbone"].items()
    )
    versus = screen["cached_vs_floor"]
    return [
        f"- Floor of the cached screen: photos decoded once {_num(floor['decode_s'])} s; "
        f"{parts} (training = trial wall minus start-up and teardown); = "
        f"{_num(floor['total_s'])} s. The cached screen took {_num(screen['cached_s'])} s: "
        f"{_num(versus['ratio'], 2)}x the floor, {_num(versus['overhead_s'])} s more, "
        f"{_num(versus['overhead_per_trial_s'], 2)} s per trial."
    ]


def screen_bounds(results: dict[str, Any]) -> list[str]:
    """What limits the screen ratio, from the measured parts: each process's time outside its
    trials, the cached trial's fixed cost, the features' one-off cost, and the backbone's share
    of an uncached trial (which alone grows with the data)."""
    screen, settings = results["screen"], results["settings"]
    uncached, cached, k = screen["trials_uncached"], screen["trials_cached"], screen["conditions"]
    outside_u = _measured(screen) - uncached["trials_wall_total_s"]
    outside_c = screen["cached_s"] - cached["trials_wall_total_s"]
    fixed_c = outside_c + k * cached["trial_wall_s"]
    lines = [
        f"- Bound: the cached screen cannot take less than its process time plus {k} cached "
        f"trials = {_num(fixed_c)} s even with free features, so on this grid the ratio is at "
        f"most {_num(screen['uncached_s'] / fixed_c)}x."
    ]
    scale = settings.get("available_images", 0) / settings["images"]
    backbone = max(uncached["trial_wall_s"] - cached["trial_wall_s"], 0.0)
    features = cached["feature_cache_s_max"]
    if scale > 1 and math.isfinite(features):
        projected_u = outside_u + k * (cached["trial_wall_s"] + backbone * scale)
        projected_c = fixed_c + features * scale
        lines.append(
            f"- Projection from these parts to all {settings['available_images']} photos (same "
            f"grid and size; backbone passes and features scale with the photos): "
            f"{_num(projected_u)} s vs {_num(projected_c)} s, "
            f"{_num(projected_u / projected_c)}x."
        )
    return lines


def profile_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    screen = results.get("screen")
    if screen:
        cached, uncached = screen["trials_cached"], screen["trials_uncached"]
        lines += [
            f"- Screen trials, median wall s: {_num(uncached['trial_wall_s'], 2)} without the feature "
            f"cache, {_num(cached['trial_wall_s'], 2)} with it (features computed once per "
            f"backbone, the longest in {_num(cached['feature_cache_s_max'], 2)} s). Per cached trial: run start -> first step "
            f"{_num(cached['startup_s'], 2)} s, last step -> closed {_num(cached['teardown_s'], 2)} s, "
            f"launcher gap between trials {_num(cached['between_trials_s'], 2)} s.",
            "- Each screen process outside its trials (imports, study, parent run, tables): "
            f"{_num(_measured(screen) - uncached['trials_wall_total_s'], 1)} s without, "
            f"{_num(screen['cached_s'] - cached['trials_wall_total_s'], 1)} s with the cache.",
            *extrapolation_lines(screen),
            *floor_lines(screen),
            *screen_bounds(results),
        ]
    trial = results.get("profile")
    if trial:
        steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in trial["steps"])
        lines.append(
            f"- One cached trial under cProfile ({trial['trial_s']:.2f} s, inflated by the "
            f"profiler): {steps}."
        )
    data = results.get("data")
    if data:
        lines.append(
            f"- Image cache: built (decode + write) in {_num(data['cache_build_s'], 2)} s, read back "
            f"and verified in {_num(data['cache_load_s'], 2)} s for {data['images']} photos."
        )
    return lines


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{_num(value, 2)}x"


def _load_change(row: dict[str, Any]) -> str:
    """The 1-minute load average before -> after the row's part."""
    before, after = row.get("load_average_before"), row.get("load_average_after")
    if not before or not after:
        return "n/a"
    return f"{before[0]:.1f} -> {after[0]:.1f}"


def _engine(row: dict[str, Any]) -> str:
    name = f"{row['engine']} {row['precision']}"
    return name + (f" (ran {row['ran']}: fallback)" if row.get("fallback") else "")


def _rate(row: dict[str, Any]) -> str:
    """images/s; a fallback not timed again (the same pass as the engine it ran) says so."""
    if row.get("images_per_s") is None and row.get("fallback"):
        return f"n/a: as {row['ran']}"
    return _num(row.get("images_per_s"))


def _compile(seconds: float | None) -> str:
    return "—" if not seconds else _num(seconds, 1)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


LOAD = "load (1 min) before -> after"


def engine_tables(results: dict[str, Any]) -> list[str]:
    """The engines bench (benchmarks/engines.py): one table per part, then its notes."""
    bench = results.get("engines")
    if not bench:
        return []
    setup = bench["settings"]
    size = setup["image_size"]
    lines = [
        "## Inference engines and fine-tuning speed-ups",
        "",
        f"{setup['images']} photos, "
        f"{'each backbone at its native resolution' if size == 'native' else f'{size} px'}, "
        f"batches of {setup['batch_size']}; each figure the best of {setup['rounds']} "
        "interleaved rounds; ratios to the reference measured beside it. OpenVINO's one-off "
        "convert + compile is not in its rate (compile s).",
        "",
    ]
    features, predict = bench.get("features", []), bench.get("predict", [])
    if features:
        lines += [
            "### 5.1 Frozen features (preprocess + backbone), images/s",
            "",
            *markdown.table(
                ["backbone", "engine / precision", "images/s", "x torch f32", "compile s", LOAD],
                [
                    [
                        f"{r['backbone']} ({r['image_size']} px)",
                        _engine(r),
                        _rate(r),
                        _x(r["x_torch_f32"]),
                        _compile(r["compile_s"]),
                        _load_change(r),
                    ]
                    for r in features
                ],
                right=(2, 3, 4),
            ),
            "",
        ]
    if predict:
        lines += [
            "### 5.2 Predict (whole classifier + softmax, `probabilities_of`, as `predict` runs "
            "it: in bf16, close calls again in f32), images/s",
            "",
            *markdown.table(
                [
                    "backbone",
                    "engine / precision",
                    "images/s",
                    "x torch f32",
                    "compile s",
                    "top-1 agreement with torch f32",
                    LOAD,
                ],
                [
                    [
                        f"{r['backbone']} ({r['image_size']} px)",
                        _engine(r),
                        _rate(r),
                        _x(r["x_torch_f32"]),
                        _compile(r["compile_s"]),
                        f"{_percent(r['top1_agreement'])} (max prob. difference "
                        f"{r['max_probability_difference']:.2g})",
                        _load_change(r),
                    ]
                    for r in predict
                ],
                right=(2, 3, 4),
            ),
            "",
        ]
    probe = bench.get("probe", [])
    if probe:
        lines += [
            "### 5.3 Probe accuracy (logistic regression on the features of a stratified "
            "70% of the photos, accuracy on the other 30%, same split for every engine)",
            "",
            *markdown.table(
                ["backbone", "engine / precision", "probe accuracy", LOAD],
                [
                    [
                        r["backbone"],
                        f"{r['engine']} {r['precision']}",
                        _percent(r["accuracy"])
                        if r["accuracy"] is not None
                        else f"n/a ({r.get('why', '')})",
                        _load_change(r),
                    ]
                    for r in probe
                ],
                right=(2,),
            ),
            "",
        ]
    decode = bench.get("decode", [])
    if decode:
        lines += [
            f"### 5.4 Decode of the same photos at {decode[0]['image_size']} px, images/s",
            "",
            *markdown.table(
                ["method", "images/s", "x without draft", LOAD],
                [
                    [
                        r["method"]
                        + (" (pool forced: few photos)" if r.get("pool_forced") else ""),
                        _num(r["images_per_s"]),
                        _x(r["x_without_draft"]),
                        _load_change(r),
                    ]
                    for r in decode
                ],
                right=(1, 2),
            ),
            "",
        ]
    tune = bench.get("finetune", [])
    if tune:
        first = tune[0]
        lines += [
            f"### 5.5 Fine-tuning steps, {first['backbone']} at {first['image_size']} px, batch "
            f"{first['batch']} (bare loop, first step excluded), images/s",
            "",
            *markdown.table(
                ["variant", "images/s", "x fp32", "compile s", LOAD],
                [
                    [
                        r["variant"],
                        _num(r["images_per_s"]) if "images_per_s" in r else f"n/a: {r['error']}",
                        _x(r.get("x_fp32")),
                        _compile(r.get("compile_s")),
                        _load_change(r),
                    ]
                    for r in tune
                ],
                right=(1, 2, 3),
            ),
            "",
        ]
        compiled = tune[-1]
        if "x_eager" in compiled:
            bench_notes = [
                f"{compiled['variant']} ran in its own process beside the same eager steps "
                f"({_num(compiled['eager_images_per_s'])} images/s there): "
                f"{_x(compiled['x_eager'])} those; x fp32 through them."
            ]
        else:
            bench_notes = []
    else:
        bench_notes = []
    notes = [*bench.get("notes", []), *bench_notes]
    unconverged = [f"{r['backbone']} {r['engine']} {r['precision']}" for r in probe
                   if r.get("converged") is False]  # fmt: skip
    if unconverged:
        notes.append(
            f"Probe not converged in 1,000 iterations: {', '.join(unconverged)} (its accuracy "
            "may be a little off)."
        )
    for part, rows in (("features", features), ("predict", predict)):
        reasons = sorted({r.get("fallback_reason", "") for r in rows if r.get("fallback")})
        if reasons:
            fell = ", ".join(f"{r['backbone']} {r['engine']} {r['precision']}" for r in rows
                             if r.get("fallback"))  # fmt: skip
            notes.append(
                f"**Fell back to PyTorch** ({part}: {fell}; not timed again, its outputs are "
                "PyTorch's): " + " / ".join(reason[:300] for reason in reasons)
            )
    return lines + [f"- {note}" for note in notes] + ([""] if notes else [])


def screen_engine_table(results: dict[str, Any]) -> list[str]:
    """The cached screen once per inference engine (`--screen-engines`), side by side."""
    screen = results.get("screen") or {}
    by_engine = screen.get("by_engine")
    if not by_engine:
        return []
    first = screen.get("engine", next(iter(by_engine)))
    rows = []
    for engine, side in by_engine.items():
        if "error" in side:  # a later engine's screen that failed
            rows.append([engine, f"failed: {side['error']}", "", "", "", "", ""])
            continue
        forward = ", ".join(f"{b} {_num(s)}" for b, s in side["forward_s"].items())
        rows.append(
            [
                f"{engine} (ran {', '.join(side['ran'])})",
                _num(side["cached_s"]),
                _x(side["x_first"]),
                f"{'~' if screen.get('extrapolated') else ''}{_x(side['ratio'])}",
                forward,
                f"{_mark(side['same_ranking'])} (max val_loss difference "
                f"{side['max_val_loss_difference']:.2g})",
                _load_change(side),
            ]
        )
    header = [
        "inference.engine",
        "cached screen wall s",
        f"x faster than {first}",
        "ratio (uncached / this)",
        "features' forward pass s",
        "same ranking as uncached",
        LOAD,
    ]
    return [
        "## Cached screen per inference engine",
        "",
        f"Each from its own empty cache folder; rows 1 and 4 above are the {first} screen's.",
        "",
        *markdown.table(header, rows, right=(1, 2, 3)),
        "",
    ]


def memory_lines(results: dict[str, Any]) -> list[str]:
    rows = results.get("memory")
    return [*memory.memory_table(rows), ""] if rows else []


def write(results: dict[str, Any], folder: Path) -> Path:
    """Write results.json and results.md into `folder`; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    settings = results["settings"]
    lines = [
        "# fashion_sweeps benchmark",
        "",
        f"Size: {settings.get('size', 'custom')}. Data: {settings['data']}; image size "
        f"{_pixels(settings['image_size'])}; screen backbone(s) {settings['backbone']} (frozen); "
        f"fine-tuning backbone {settings['finetune_backbone']}; "
        f"{settings['cpus']} CPU cores, {settings['torch_threads']} torch threads; "
        f"{settings['when']}; bench wall time {_num(results.get('total_s', float('nan')))} s; "
        f"load average (1/5/15 min) {_load(settings.get('load_average_before'))} before, "
        f"{_load(settings.get('load_average_after'))} after (above {settings['cpus']}: other "
        "processes share the cores and every figure is noisy).",
        "",
        table(results),
        "",
        *screen_engine_table(results),
        *engine_tables(results),
        *memory_lines(results),
        "## Profile",
        "",
        *profile_lines(results),
        "",
    ]
    path = folder / "results.md"
    path.write_text("\n".join(lines))
    return path
