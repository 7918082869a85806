"""Workers logging the same data set at once (a SLURM array on one store) race on MLflow's
unique (experiment, name, digest) row: the loser must link the row the winner wrote, not crash
its condition (seen on the local SLURM: a UNIQUE constraint failure crashed one task of four)."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Dataset, DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fashion_sweeps.tracking.runs import TrackedRun


class RacedClient(MlflowClient):
    """A store where another worker inserts the same data set just before this one does."""

    def log_inputs(self, run_id, datasets=None, models=None):
        if not getattr(self, "raced", False):
            self.raced = True
            other = MlflowClient(self.tracking_uri)
            other.log_inputs(other.create_run(self.experiment_id).info.run_id, datasets=datasets)
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return super().log_inputs(run_id, datasets=datasets, models=models)


def test_a_data_set_another_worker_just_logged_is_linked_not_a_crash(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = TrackedRun.start(OmegaConf.create({"uri": uri}), "raced")
    run.client = RacedClient(uri)
    run.client.experiment_id = run.experiment_id
    data = Dataset(name="clothing-train", digest="abc123", source_type="local", source="/data")
    run.log_inputs([DatasetInput(dataset=data)])
    logged = MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in logged] == [("clothing-train", "abc123")]
