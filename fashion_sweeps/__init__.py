"""fashion_sweeps: experiment sweeps with tracked runs for fashion image classification."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

# `${fashion_sweeps_sample:clothing_sample}` in a config: the bundled sample, wherever installed.
OmegaConf.register_resolver(
    "fashion_sweeps_sample", lambda name: str(SAMPLE_DIR / name), replace=True
)


def _gpus_per_task(accelerator: str) -> int | None:
    """One GPU per SLURM task for GPU trainers; none for `trainer=cpu` (asking a CPU-only
    cluster for a GPU makes sbatch refuse the whole array)."""
    return 1 if str(accelerator) in ("gpu", "cuda") else None


# `${fashion_sweeps_gpus_per_task:${trainer.accelerator}}` in conf/hydra/launcher/slurm.yaml.
OmegaConf.register_resolver("fashion_sweeps_gpus_per_task", _gpus_per_task, replace=True)


def _builder_resolution(target: str) -> int | None:
    """The resolution a backbone's pretrained weights were trained at (Lite0 224, Lite2 260,
    torchvision's 224), from its builder, before anything is built or downloaded; None when it
    has no weights of a fixed size."""
    from hydra.utils import get_method

    size = getattr(get_method(target), "native_resolution", None)
    return None if size is None else int(size)


def _native_resolution(target: str) -> int:
    """`_builder_resolution`, required."""
    size = _builder_resolution(target)
    if size is None:
        raise ValueError(
            f"The backbone {target} has no native resolution (no pretrained weights of a fixed "
            "size): give dataset.image_size as a number of pixels."
        )
    return size


# `dataset.image_size: ${fashion_sweeps_native_resolution:${backbone._target_}}`: each swept
# backbone at its weights' resolution (conf/experiment/clothing_screen.yaml).
OmegaConf.register_resolver("fashion_sweeps_native_resolution", _native_resolution, replace=True)


def _image_size(backbone: object, default: int) -> int:
    """A data set's image size: the native resolution of a backbone that starts from weights
    (`pretrained` or `weights_path`) and has one, else the data set's own `default`."""
    from omegaconf import DictConfig

    if not isinstance(backbone, DictConfig) or not (
        backbone.get("pretrained") or backbone.get("weights_path")
    ):
        return int(default)
    return _builder_resolution(backbone._target_) or int(default)


# `image_size: ${fashion_sweeps_image_size:${backbone},64}` in conf/dataset/: a pretrained
# Lite0 trains at 224 px unless `dataset.image_size` is given; a network from scratch at 64.
OmegaConf.register_resolver("fashion_sweeps_image_size", _image_size, replace=True)
