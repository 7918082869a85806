"""`make bench` (`python -m benchmarks.run` in a source checkout): the screen, data-loading,
fine-tuning, per-trial overhead and inference-engine (engines.py) figures, measured side by side in
one run (run.py orchestrates; see README); storage.py and tracking_load.py, the scale-out figures
(docs/scale_out.md).

Not part of the installed package: they measure the framework from its source checkout, and write
their results beside this file."""
