"""The recipes of conf/experiment/ and their results page, docs/results.md, regenerated from
MLflow, never typed by hand (`fashion-sweeps results`, `make results`).

- catalogue.py: the recipes, each file's `recipe:` block (its study, the figures the study
  reports, our target, what it needs) and what it trains.
- runs.py: a recipe's runs in MLflow (tag `recipe=<name>`), grouped by what their command
  changed; per seed the latest finished run counts.
- sweep_runs.py: a sweep recipe's sweeps in MLflow, each with its champion as the sweep report
  chooses it; the latest complete one as written counts.
- page.py: the page and the console table; figures.py, how it writes figures and judges the
  target; sweep_page.py, a sweep recipe's section.
- earlier_page.py: what the previous page said of recipes the store at hand has no runs of,
  carried over.
- command.py: `fashion-sweeps results`; with --run it trains the recipes first.
"""
