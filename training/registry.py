"""Registering exported router versions in the MLflow Model Registry (the runtime side, serving
`models:/NAME@ALIAS`, is confroute/registry.py).

Every version `confroute train` and `confroute retrain` export is logged to its run under
`model/` (manifest, ONNX files, the hashes in the manifest) and registered from there as a new
version of the registered model named in the config (`registry.name`, default `confroute`),
tagged with its confroute version id. Aliases: `train` points `champion` at what it made current;
the retrain gate points `champion` at a promoted candidate and `challenger` at one that lost.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.tracking import resolve_uri

CHAMPION, CHALLENGER = "champion", "challenger"


def register(tracking_uri: str | None, name: str, run_id: str, version_id: str) -> int:
    """A new registered version of `name` from the run's `model/` artifacts; its number."""
    client = MlflowClient(resolve_uri(tracking_uri))
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="confroute router versions: manifest, "
                                       "ONNX classifiers and policy (confroute serve --version)")
    mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id,
                                     tags={"confroute.version": version_id})
    return int(mv.version)


def set_alias(tracking_uri: str | None, name: str, alias: str, number: int) -> None:
    MlflowClient(resolve_uri(tracking_uri)).set_registered_model_alias(name, alias, str(number))
