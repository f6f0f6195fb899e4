"""The embedded MLflow SQLite store, complete or absent (see :mod:`sweeps._embedded_stores`).

MLflow builds a new store with schema migrations that are not one transaction; a kill in the
middle left ``_alembic_tmp_*`` tables that broke every later run. The store is built aside and
moved into place whole.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from sweeps._embedded_stores import ensure_sqlite_store
from sweeps._embedded_stores import sqlite_path


def ensure_mlflow_store(tracking_uri: str, *, artifact_root: str | None) -> None:
    """Make the SQLite MLflow store at ``tracking_uri`` exist whole (no-op for a server)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return

    def build(aside: Path) -> None:
        uri = f"sqlite:///{aside}"
        store = SqlAlchemyStore(uri, artifact_root or aside.parent.resolve().as_uri())
        store.engine.dispose()
        # MLflow caches one engine per URI for the life of the process; this URI is never
        # opened again.
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)

    ensure_sqlite_store(path, "MLflow tracking store", build, _mlflow_head,
                        holds_data_table="runs")


@functools.cache
def _mlflow_head() -> str:
    return str(_get_latest_schema_revision())


__all__ = ["ensure_mlflow_store"]
