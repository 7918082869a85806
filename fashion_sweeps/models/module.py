"""The LightningModule: loss, optimizer, scheduler and torchmetrics around a `Classifier`
(conf/optimizer/, conf/scheduler/).

The optimizer arrives as a partial from Hydra (`_target_: torch.optim.SGD`, `_partial_: true`):
`conf/optimizer/sgd.yaml`'s `lr` is the `lr` SGD receives in `configure_optimizers`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fashion_sweeps.errors import UserError
from fashion_sweeps.evaluation import Predictions
from fashion_sweeps.models.classifier import Classifier, to_unit
from fashion_sweeps.run_folder import BACKBONE_PREFIX, WITHOUT_BACKBONE

log = logging.getLogger(__name__)


def _frozen(key: str) -> bool:
    return key.startswith(BACKBONE_PREFIX)


class OptimizerConfigError(UserError, ValueError):
    """An `optimizer.*` value no optimizer can use."""


def check_optimizer(cfg: DictConfig) -> None:
    """Checked before a run opens: torch would fail only once training starts."""
    lr = cfg.get("lr")
    # `not lr >= 0` also refuses NaN; inf stays allowed (it diverges, recorded as such).
    if lr is not None and not float(lr) >= 0:
        raise OptimizerConfigError(
            f"optimizer.lr={lr!r}: a learning rate is 0 or more, e.g. optimizer.lr=0.001."
        )


def stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    # `average` is always explicit: torchmetrics' defaults differ between versions and tasks.
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
    if prefix != "train_":
        metrics["f1_weighted"] = MulticlassF1Score(num_classes, average="weighted")
        metrics["f1_macro"] = MulticlassF1Score(num_classes, average="macro")
    return MetricCollection(metrics, prefix=prefix)


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        model: Classifier,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        on_features: bool = False,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights)
        n = len(model.classes)
        self.train_metrics = stage_metrics(n, "train_")
        self.val_metrics = stage_metrics(n, "val_")
        self.test_metrics = stage_metrics(n, "test_")
        # Set when the training loss stops being finite: the run stops and is marked failed.
        self.divergence: str | None = None
        # True when batches hold cached frozen-backbone features (models/features.py), not images:
        # only the head runs. `self.model` stays the whole deployable Classifier.
        self.on_features = on_features
        # Training batches only (data/augment.py), on the device, before the model's preprocess.
        self.augment = augment
        # The last test pass's softmax outputs and targets: the evaluation reuses them instead of
        # running the test split through the model a second time.
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # The training epoch's summed loss and images, logged at its last batch.
        self._loss_sum, self._seen = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(x) if self.on_features else self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, y, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        target = y
        if self.augment is not None and not self.on_features:
            # MixUp / CutMix give soft targets; the training accuracy still counts y.
            x, target = self.augment.mix(self.augment(to_unit(x)), y, len(self.model.classes))
        logits = self(x)
        loss = self._loss(logits, target)
        if not torch.isfinite(loss):
            self.divergence = (
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, "
                f"batch {batch_idx}"
            )
            log.error("Run diverged: %s. Stopping it.", self.divergence)
            self.trainer.should_stop = True
            return None  # Lightning skips the optimizer step for this batch
        self.train_metrics.update(logits, y)
        # A tensor, not float(loss): reading the value back would wait for the device each step.
        self._loss_sum = self._loss_sum + loss.detach() * len(y)
        self._seen += len(y)
        if self.trainer.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches:
            # Logged once an epoch, not at every step: Lightning's per-call bookkeeping was a
            # third of a screen trial on cached features. sync_dist: averaged over DDP ranks.
            mean = self._loss_sum / self._seen
            self.log("train_loss", mean, on_step=False, on_epoch=True, sync_dist=True)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._seen = 0.0, 0

    def _evaluate(self, batch, metrics: MetricCollection, prefix: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        metrics.update(logits, y)
        self.log(f"{prefix}loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, on_epoch=True)
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val_")

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, self.test_metrics, "test_")
        self._test_outputs.append((torch.softmax(logits.float(), dim=1).cpu(), batch[1].cpu()))

    def test_predictions(self) -> Predictions | None:
        """The last test pass's outputs in split order; None where this process saw only its
        share of the split (DDP) or no test pass ran."""
        if not self._test_outputs or self.trainer.world_size > 1:
            return None
        probs, targets = zip(*self._test_outputs, strict=True)
        return Predictions(
            probs=torch.cat(probs).numpy(),
            targets=torch.cat(targets).numpy().astype("int64"),
            classes=list(self.model.classes),
        )

    def on_train_start(self) -> None:
        # seed_everything gives every DDP rank the same generator: without this, all ranks would
        # draw the same augmentation and dropout masks for their different images.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Nothing to train: every parameter is frozen.")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """On cached features the backbone never runs, so never changes: its weights stay out of
        the checkpoints (two a epoch, a screen's biggest writes), and come back on loading."""
        if self.on_features:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not _frozen(k)}
            checkpoint[WITHOUT_BACKBONE] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get(WITHOUT_BACKBONE):
            for key, value in self.state_dict().items():
                if _frozen(key):
                    checkpoint["state_dict"].setdefault(key, value)

    def on_validation_epoch_end(self) -> None:
        val_loss = self.trainer.callback_metrics.get("val_loss")
        if val_loss is not None and not math.isfinite(float(val_loss)) and not self.diverged:
            self.divergence = f"non-finite validation loss at epoch {self.current_epoch}"
            log.error("Run diverged: %s. Stopping it.", self.divergence)
            self.trainer.should_stop = True
