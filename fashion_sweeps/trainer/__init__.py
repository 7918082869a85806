"""The Lightning Trainer of one run and what serves it  (conf/trainer/): build.py makes the
Trainer, clock.py times its steps, distributed.py knows the rank before any Trainer exists."""
