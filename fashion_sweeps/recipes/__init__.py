"""The recipes of conf/experiment/ and their results page (docs/results.md), regenerated from
MLflow, never typed by hand (`fashion-sweeps results`, `make results`).

- catalogue.py: a recipe's facts (its study, the figures the study reports, our target, what it
  needs that a machine may lack), the `recipe:` block of `conf/experiment/<name>.yaml`, read by
  composing `experiment=<name>`; and what a recipe trains, to tell its runs apart.
- runs.py: our figures, the MLflow runs tagged `recipe=<name>` (tracking/job_run.py tags every
  run of a recipe so, with the `machine` it ran on and the `command` that runs it again).
  Children of a sweep stage or of a sampler study are trials, not runs of the recipe, and are
  left out. Per seed the latest finished run counts; failed, diverged, killed and unfinished
  runs are listed and never averaged. Runs whose command changes a training setting (anything
  but the seed, where the data is, tracking, outputs and where the run executes) are grouped by
  those changes and never compared with the target.
- page.py: the page and the console table written from the recipes and their runs.
- earlier_page.py: what the previous page said of recipes the store at hand has no runs of,
  carried over.
- command.py: `fashion-sweeps results [--run NAME... --seeds 42 7 --root DATASET=PATH]
  [-- OVERRIDES]`, which trains first with --run, one `fashion-sweeps train experiment=NAME
  seed=S` process after the other, then writes the page.
"""
