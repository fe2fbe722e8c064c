"""Where ``--track`` logs: the MLflow tracking URI (checked before any work) and opening a run.

``--track mlflow`` uses ``$MLFLOW_TRACKING_URI`` when it is set, else :data:`DEFAULT_URI`,
MLflow's own default: a SQLite database ``mlflow.db`` in the current folder (made absolute),
with the artifacts in ``mlruns/`` beside it. ``mlflow ui --backend-store-uri sqlite:///mlflow.db``
and ``MlflowClient(tracking_uri=...)`` read it with no environment variable. ``mlflow:PATH.db``
is a SQLite file; ``sqlite:///...``, ``http(s)://HOST``, ``databricks`` and SQLAlchemy database
URIs (``postgresql``, ``mysql``, ``mssql``) go to MLflow. MLflow's file store (a folder,
``file:``) is refused, since MLflow 3 keeps it in maintenance mode and its own client refuses it,
unless the user has set ``MLFLOW_ALLOW_FILE_STORE=true`` themselves (cxr_cad never sets it).
Anything else is a one-line :class:`~cxr_cad.errors.ConfigError` (exit 2 at argument checking).
Passwords in a URI are masked (:func:`redact`) wherever a URI is shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cxr_cad.errors import ConfigError, CxrCadError, MissingExtraError

DEFAULT_DB = "mlflow.db"
#: MLflow's own default store: ``mlflow.db`` in the current folder (made absolute when used).
DEFAULT_URI = f"sqlite:///{DEFAULT_DB}"
ENV_URI = "MLFLOW_TRACKING_URI"
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_INSTALL = "`pip install -c constraints/cpu.txt -e '.[track]'`"


def redact(uri: str) -> str:
    """``uri`` without the password of a ``scheme://user:password@host`` (for messages and logs)."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", uri)


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


def _sqlite_uri(path: str) -> str:
    """``sqlite:////abs/path.db`` (four slashes: an absolute path) for a path relative to the current folder."""
    return "sqlite:///" + Path(path).expanduser().absolute().as_posix()


def resolve_uri(uri: str, source: str = "--track mlflow:") -> str:
    """The MLflow tracking URI for ``uri`` (a relative SQLite path made absolute). ConfigError
    (one line) for a URI MLflow cannot open or cxr_cad does not know."""
    shown = f"{source}{redact(uri)}"
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*:", uri) else ""
    base = scheme.split("+", 1)[0]
    if uri == "databricks":
        return uri
    if not scheme:  # a bare path: a SQLite file, or an old file-store folder
        if uri.lower().endswith(_DB_SUFFIXES):
            return _sqlite_uri(uri)
        if _file_store_allowed():
            return Path(uri).expanduser().absolute().as_uri()
        raise ConfigError(
            f"{shown}: a folder is MLflow's file store, which MLflow 3 no longer opens; use a SQLite "
            f"store, e.g. mlflow:{Path(uri) / DEFAULT_DB} (move old runs with `mlflow migrate-filestore`)"
        )
    if base == "file":
        if _file_store_allowed():
            return uri
        raise ConfigError(
            f"{shown}: MLflow's file store is in maintenance mode and MLflow 3 refuses it; use "
            f"mlflow:sqlite:///PATH/{DEFAULT_DB} (or set MLFLOW_ALLOW_FILE_STORE=true yourself)"
        )
    if base == "sqlite":
        if not uri.startswith("sqlite:///") or len(uri) <= len("sqlite:///"):
            raise ConfigError(f"{shown}: a SQLite store is sqlite:///relative/{DEFAULT_DB} or sqlite:////abs/path.db")
        return _sqlite_uri(uri[len("sqlite:///") :])
    if base in ("http", "https") and scheme == base:
        if not urlsplit(uri).netloc:
            raise ConfigError(f"{shown}: an MLflow server URI needs a host, e.g. http://mlflow.example:5000")
        return uri
    if base == "databricks" or base in _SQL_SCHEMES:
        return uri
    raise ConfigError(
        f"{shown}: unknown tracking URI; use PATH.db, sqlite:///PATH.db, http(s)://HOST:PORT, "
        "databricks or a postgresql/mysql/mssql database URI"
    )


def parse_track(spec: str | None) -> str | None:
    """``"mlflow"`` -> ``$MLFLOW_TRACKING_URI`` or :data:`DEFAULT_URI`; ``"mlflow:URI"`` -> URI;
    None -> None; each resolved by :func:`resolve_uri`. ConfigError otherwise."""
    if spec is None:
        return None
    kind, _, uri = spec.partition(":")
    if kind != "mlflow":
        raise ConfigError(f"--track {spec!r}: only 'mlflow' or 'mlflow:URI' is supported")
    if uri:
        return resolve_uri(uri)
    env = os.environ.get(ENV_URI, "").strip()
    return resolve_uri(env, f"${ENV_URI}=") if env else resolve_uri(DEFAULT_URI)


def mlflow_client_class(uri: str):
    """MLflow's client class; MissingExtraError when MLflow (or, for a database store, SQLAlchemy
    and Alembic) is not installed."""
    try:
        from mlflow import MlflowClient

        if uri.split(":", 1)[0].split("+", 1)[0] in _SQL_SCHEMES:
            import alembic  # noqa: F401
            import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"--track mlflow needs {exc.name or 'MLflow'} for the {redact(uri).split(':', 1)[0]} store; "
            f"install the optional extra with {_INSTALL}"
        ) from exc
    return MlflowClient


def open_run(uri: str, command: str, experiment: str, run_name: str | None) -> tuple[Any, str]:
    """(client, run id) of a new run in ``experiment`` (created; a SQLite store's artifacts go
    to ``mlruns/`` beside the database)."""
    client = mlflow_client_class(uri)(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = None
            if uri.startswith("sqlite:///"):
                where = (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
            exp_id = client.create_experiment(experiment, artifact_location=where)
        run = client.create_run(exp_id, run_name=run_name, tags={"cxr_cad.command": command})
    except Exception as exc:  # noqa: BLE001 - MLflow's errors (store, network) become one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CxrCadError(f"cannot open an MLflow run in {redact(uri)}: {first}") from exc
    return client, run.info.run_id
