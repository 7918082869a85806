"""`hydra/sweeper=stages`, fashion_sweeps' resumable sweep-stage sweeper, as a Hydra plugin.

Hydra finds plugins by importing every module of the `hydra_plugins` namespace package, so this
package keeps its imports light (Hydra and the Optuna sweeper's config dataclasses); the sweeper
itself (`fashion_sweeps.sweeps.sweeper`) is imported when a sweep starts.
"""
