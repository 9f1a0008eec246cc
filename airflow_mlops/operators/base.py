"""The base of every airflow_mlops operator: connections, storage, run identity, report URIs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.lineage import RunContext
from airflow_mlops.hooks.mlflow import DEFAULT_CONN_ID, MlflowHook
from airflow_mlops.hooks.storage import StorageHook

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.storage import Storage

ARTIFACTS_ENV = "AIRFLOW__MLOPS__ARTIFACTS_URI"


def configured_artifacts_root() -> str | None:
    """``[mlops] artifacts_uri`` in Airflow's config (env ``AIRFLOW__MLOPS__ARTIFACTS_URI``),
    a local path or ``s3://`` prefix, or None when it is not set."""
    from airflow.sdk import conf

    return (
        conf.get("mlops", "artifacts_uri", fallback=None) or os.environ.get(ARTIFACTS_ENV) or None
    )


def default_artifacts_root() -> str:
    """Where reports go when an operator is given no explicit URI.

    :func:`configured_artifacts_root`, else ``$AIRFLOW_HOME/mlops_artifacts``.
    """
    configured = configured_artifacts_root()
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "mlops_artifacts")


def as_mapping(value: Any, field: str) -> dict[str, Any]:
    """A rendered XCom/param that must be a mapping (JSON text is accepted too)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{field} must be a mapping or JSON object text: {err}") from err
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field} must be a mapping, got {type(value).__name__}: {value!r}")
    return dict(value)


def _path_safe(value: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", value)
    # '.' and '..' navigate instead of naming a folder (Airflow accepts a run id of '..'
    # when [core] allow_double_dot_in_ids is set), and '' would drop a level: never let
    # them through as a segment.
    return safe if safe.strip(".") else "_" * max(len(safe), 1)


class MlopsBaseOperator(BaseOperator):
    """Shared parameters and helpers; subclasses stay thin and call ``airflow_mlops.core``.

    :param mlflow_conn_id: MLflow connection (default ``mlflow_default``, or the embedded
        local store when that connection is not defined).
    :param aws_conn_id: AWS connection used for ``s3://`` URIs.
    """

    template_fields: Sequence[str] = ("mlflow_conn_id", "aws_conn_id")
    ui_color = "#d5e8f7"

    def __init__(
        self,
        *,
        mlflow_conn_id: str = DEFAULT_CONN_ID,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.aws_conn_id = aws_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def storage(self) -> Storage:
        return StorageHook(aws_conn_id=self.aws_conn_id).get_storage()

    @staticmethod
    def run_context(context: Context) -> RunContext:
        """Identity of this task instance, for lineage tags and idempotency keys."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return RunContext(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            try_number=int(getattr(ti, "try_number", 1) or 1),
            map_index=-1 if map_index is None else int(map_index),
        )

    def default_report_uri(self, context: Context, name: str) -> str:
        """``<artifacts root>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<name>``."""
        return self.default_report_uri_for(context, name)

    @classmethod
    def default_report_uri_for(cls, context: Context, name: str) -> str:
        """Same as :meth:`default_report_uri`, for ``@task`` functions that have a context."""
        from airflow_mlops.core.storage import join_uri

        run = cls.run_context(context)
        parts = [_path_safe(run.dag_id), _path_safe(run.run_id), _path_safe(run.task_id)]
        if run.map_index >= 0:
            parts.append(str(run.map_index))
        return join_uri(default_artifacts_root(), *parts, name)
