"""A run on several nodes needs lineage and artifacts that every node reaches; refused before any step starts otherwise.

On one machine the run's working folder holds both: MLflow's SQLite file and the step
artifacts. On a cluster a step runs on any node, and a node's local disk is invisible to the
others: a step there would find no workflow run in its own empty database ("Run ... not
found") and no upstream artifact. So a cluster of several nodes needs a tracking server
(`MLFLOW_TRACKING_URI`; SQLite is not safe with writers on several machines, even on a shared
file system) and an object store for the run (`--storage` or `LIFECYCLE_STORAGE`: s3://, gs://).
A shared folder will not do with a tracking server either: the server registers a model only
from a URI it can resolve, not from a path on some node (cluster/README.md).
"""

from __future__ import annotations

from urllib.parse import urlparse

from components.storage import is_remote

FIX = ("set MLFLOW_TRACKING_URI to an MLflow tracking server every node reaches, and pass --storage s3://BUCKET/PATH "
       "(or gs://..., or set LIFECYCLE_STORAGE); cluster/README.md shows both")


def problems(nodes: int, storage: str | None, tracking_uri: str | None) -> list[str]:
    """What a run on `nodes` alive nodes lacks, one phrase each; [] on one node or when nothing is missing.

    storage: the run's storage root (--storage), None for the working folder. tracking_uri:
    MLFLOW_TRACKING_URI, None for the SQLite file in the working folder.
    """
    if nodes < 2:
        return []
    found = []
    if urlparse(tracking_uri or "").scheme not in ("http", "https", "databricks"):
        where = tracking_uri or "the SQLite file in the working folder"
        found.append(f"lineage would go to {where}, not to a tracking server (MLFLOW_TRACKING_URI)")
    if not storage or not is_remote(storage):
        found.append("artifacts and checkpoints would go to " + (f"the folder {storage}" if storage else "the working folder")
                     + ", not to an object store (--storage)")
    return found


def refusal(nodes: int, found: list[str]) -> str:
    """The error a run gets for `found` (problems' phrases) on a cluster of `nodes` nodes."""
    return f"this Ray cluster has {nodes} nodes, and {'; '.join(found)}: {FIX}"
