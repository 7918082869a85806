"""The model registry: the best full run's model under a name, with the alias `champion`.

Light on purpose (MLflow is imported when a model is registered): the `report` command's
`--help` shows the default name without loading MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_REGISTERED_NAME = "fashion-classifier"
CHAMPION = "champion"
MODEL_URI_TAG = "model_uri"  # run tag: the `models:/<id>` URI of the model the run logged
# What `predict`, `export` and `serve` use when no model is named: the last report's champion.
CHAMPION_URI = f"models:/{DEFAULT_REGISTERED_NAME}@{CHAMPION}"


def _new_version(client: MlflowClient, name: str, model_uri: str, run_id: str) -> ModelVersion:
    """A new version of `name` in the client's own registry, linked both ways to the logged
    model, as `mlflow.register_model` links it; that fluent call would register into the
    process's global registry, which another store may have set (a report, then predict)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    with contextlib.suppress(MlflowException):  # the registered model exists already
        client.create_registered_model(name)
    model_id = model_uri.removeprefix("models:/")
    # The registry resolves a `models:/m-...` source through the global tracking URI.
    mlflow.set_tracking_uri(client.tracking_uri)
    version_ = client.create_model_version(
        name, model_uri, run_id=run_id, model_id=model_id, await_creation_for=0
    )
    earlier = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    linked = [*json.loads(earlier or "[]"), {"name": name, "version": version_.version}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
    return version_


def register(
    client: MlflowClient,
    run_id: str,
    name: str = DEFAULT_REGISTERED_NAME,
    alias: str = CHAMPION,
) -> str:
    """Register the model a run logged under `name` and point `alias` at the new version.
    Returns `models:/<name>@<alias>`."""
    from mlflow.exceptions import MlflowException

    model_uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise MlflowException(
            f"Run {run_id} has no logged model (no {MODEL_URI_TAG!r} tag): it was trained with "
            "`tracking.log_model=false`, failed, or predates model logging. Train it again with "
            "model logging on, or register another run."
        )
    # Registering the same model again (a report run twice) reuses its version.
    same = [
        v
        for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if v.source == model_uri
    ]
    if same:
        version_ = max(same, key=lambda v: int(v.version))
    else:
        version_ = _new_version(client, name, model_uri, run_id)
    client.set_registered_model_alias(name, alias, str(version_.version))
    log.info("Registered %s as %s version %s, alias %s", model_uri, name, version_.version, alias)
    return f"models:/{name}@{alias}"
