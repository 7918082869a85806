"""`make bench` / `fashion-sweeps bench`: the screen, data-loading, fine-tuning and per-trial
overhead figures, measured side by side in one run (run.py orchestrates; see README)."""
