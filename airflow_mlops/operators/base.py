"""The base of every airflow_mlops operator and its parameter toolkit.

:class:`MlopsBaseOperator` holds the connections, storage, run identity and default report
URIs; the functions check rendered parameters (choices, numbers, name lists, mappings, data
URIs under the allowed prefixes) with errors that name the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.core.errors import ConfigError, DataUriNotAllowedError
from airflow_mlops.core.jsonsafe import parse_json_mapping
from airflow_mlops.core.lineage import RunContext
from airflow_mlops.core.storage import (
    Storage,
    UncheckableUriError,
    is_under_root,
    join_uri,
    normalize_uri,
)
from airflow_mlops.core.values import is_templated
from airflow_mlops.hooks.mlflow import DEFAULT_CONN_ID, MlflowHook
from airflow_mlops.hooks.storage import StorageHook

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow

__all__ = [
    "ARTIFACTS_ENV",
    "DAG_ARTIFACTS_PREFIX",
    "NON_DATA_URI_FIELDS",
    "MlopsBaseOperator",
    "MlopsHookMixin",
    "allowed_estimator_modules",
    "as_data_window",
    "as_mapping",
    "as_name_list",
    "as_number",
    "check_choice",
    "check_data_uri",
    "configured_artifacts_root",
    "configured_deployment",
    "dag_artifacts_folder",
    "default_artifacts_root",
    "mask_error",
    "normalize_data_uri",
    "path_safe",
    "record_task_error",
    "rendered_window",
    "window_param",
]

ARTIFACTS_ENV = "AIRFLOW__MLOPS__ARTIFACTS_URI"


def configured_artifacts_root() -> str | None:
    """``[mlops] artifacts_uri`` in Airflow's config (env ``AIRFLOW__MLOPS__ARTIFACTS_URI``),
    a local path or ``s3://`` prefix, or None when it is not set."""
    from airflow.sdk import conf

    return (
        conf.get("mlops", "artifacts_uri", fallback=None) or os.environ.get(ARTIFACTS_ENV) or None
    )


def configured_deployment() -> str:
    """``[mlops] deployment`` (default ``default``): part of every idempotency key, so two
    Airflow deployments sharing one MLflow never reuse each other's runs or versions."""
    from airflow.sdk import conf

    from airflow_mlops.core.lineage import DEFAULT_DEPLOYMENT

    value = conf.get("mlops", "deployment", fallback=None) or DEFAULT_DEPLOYMENT
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ConfigError(
            f"[mlops] deployment {value!r} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return value


def default_artifacts_root() -> str:
    """Where reports go when an operator is given no explicit URI.

    :func:`configured_artifacts_root`, else ``$AIRFLOW_HOME/mlops_artifacts``.
    """
    configured = configured_artifacts_root()
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "mlops_artifacts")


def allowed_estimator_modules() -> tuple[str, ...]:
    """``[mlops] allowed_estimator_modules``: comma-separated modules (besides ``sklearn`` and
    ``xgboost``) that estimator and preprocessing dotted paths may name. A setting, not a
    pipeline key: the pipeline YAML is not trusted to widen what gets imported."""
    from airflow.sdk import conf

    text = conf.get("mlops", "allowed_estimator_modules", fallback="") or ""
    return tuple(part.strip() for part in text.split(",") if part.strip())


#: Placeholder in ``allowed_data_prefixes`` for the task's own DAG folder under the artifacts
#: root (``<root>/<dag_id>``), resolved at execute time: the factories add it for data the
#: provider wrote itself in that DAG, such as segment files. Never the whole root: it holds
#: every other pipeline's holdout, reference and prediction files.
DAG_ARTIFACTS_PREFIX = "<mlops artifacts of this dag>"
#: Template fields ending in ``_uri`` that do not name input/output data.
NON_DATA_URI_FIELDS = frozenset({"report_uri", "report_folder_uri", "model_uri", "artifacts_uri"})


def normalize_data_uri(uri: str, field: str) -> str:
    """:func:`airflow_mlops.core.storage.normalize_uri`, refusing with an error naming ``field``.

    Local paths and ``s3://`` URIs only, with no ``.``/``..``/empty segments and no other
    ``file://`` host, so a check can never be passed by spelling a URI differently.
    """
    try:
        return normalize_uri(uri)
    except UncheckableUriError as err:
        raise DataUriNotAllowedError(f"{field} {uri!r} cannot be checked: {err}") from None


def check_data_uri(
    uri: str, allowed_prefixes: Sequence[str], field: str, dag_id: str | None = None
) -> str:
    """``uri`` normalised, or :class:`DataUriNotAllowedError` naming the field and the prefixes.

    Folder semantics on whole segments: ``s3://b/data`` covers ``s3://b/data/x.csv``, not
    ``s3://b/data2``. :data:`DAG_ARTIFACTS_PREFIX` stands for ``<artifacts root>/<dag_id>`` (``dag_id`` needed).

    Every operator that reads or writes pipeline data calls this after rendering (see
    :meth:`MlopsBaseOperator.pre_execute`), so a trigger parameter cannot point a task at
    ``/etc`` or another team's bucket.
    """
    normalized = normalize_data_uri(uri, field)
    prefixes = [
        dag_artifacts_folder(dag_id) if p == DAG_ARTIFACTS_PREFIX else p for p in allowed_prefixes
    ]
    allowed = [normalize_data_uri(p, "allowed data prefix") for p in prefixes]
    if not any(is_under_root(normalized, p) for p in allowed):
        raise DataUriNotAllowedError(
            f"{field} {uri!r} is outside the pipeline's allowed data prefixes {prefixes}: "
            "set data.allowed_prefixes in the pipeline YAML to read it"
        )
    return normalized


def dag_artifacts_folder(dag_id: str | None) -> str:
    """``<artifacts root>/<dag_id>``: where :meth:`MlopsBaseOperator.default_report_uri` of
    every task of that DAG writes."""
    if not dag_id:
        raise DataUriNotAllowedError(f"{DAG_ARTIFACTS_PREFIX} needs the task's dag_id")
    return join_uri(default_artifacts_root(), path_safe(dag_id))


def as_mapping(value: Any, field: str) -> dict[str, Any]:
    """A rendered XCom/param that must be a mapping (JSON text is accepted too)."""
    return parse_json_mapping(
        value,
        field,
        bad_json="{field} must be a mapping or JSON object text: {error}",
        not_mapping="{field} must be a mapping, got {type}: {value}",
    )


def window_param(window: Any) -> Any:
    """A ``window`` parameter as templatable data: ``"all"``, a mapping or a template string;
    a ``DataWindow`` object becomes its mapping, which builds the same window again."""
    if window is None or isinstance(window, (str, Mapping)):
        return dict(window) if isinstance(window, Mapping) else window
    dump = getattr(window, "model_dump", None)
    if dump is None:
        raise ConfigError(f"window must be 'all', a mapping or a DataWindow, got {window!r}")
    return dump(mode="json", exclude_defaults=True) or "all"


def rendered_window(window: Any) -> Any:
    """A rendered ``window``: ``None``/``""`` is ``all``; JSON object text is read as a mapping."""
    if window is None or window == "":
        return "all"
    if isinstance(window, str) and window.lstrip().startswith("{"):
        return as_mapping(window, "window")
    return window


def as_data_window(window: Any) -> DataWindow:
    """The checked ``DataWindow`` of a rendered ``window`` parameter (errors name the field)."""
    from pydantic import ValidationError

    from airflow_mlops.core.data_window import DataWindow

    try:
        return DataWindow.model_validate(rendered_window(window))
    except ValidationError as err:
        raise ConfigError(f"window: {err}") from err


def check_choice(value: Any, choices: Sequence[str], field: str, *, rendered: bool = False) -> None:
    """Catch a typo at parse time; a templated value is checked once ``rendered``."""
    if (rendered or not is_templated(value)) and value not in choices:
        raise ConfigError(f"{field} must be one of {list(choices)}, got {value!r}")


def as_number(value: Any, kind: type, field: str) -> Any:
    """A rendered template is a string: convert it, naming the field when it cannot be."""
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a number, got {value!r}") from None


def as_name_list(value: Any, field: str) -> list[str] | None:
    """``None``, a list of names, one name, or a JSON list rendered from a template."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [text]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{field} is not a JSON list: {err}") from err
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{field} must be a list of names, got {value!r}")
    return list(value)


def path_safe(value: str) -> str:
    """``value`` as one folder name of the artifacts root (also used by the MLOps page)."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", value)
    # '.' and '..' navigate instead of naming a folder (Airflow accepts a run id of '..'
    # when [core] allow_double_dot_in_ids is set), and '' would drop a level: never let
    # them through as a segment.
    return safe if safe.strip(".") else "_" * max(len(safe), 1)


def record_task_error(context: Context) -> None:
    """``on_failure_callback`` of every provider operator: push the error for the run summary.

    The summary task runs in another process and cannot read this task's exception, so the
    ``Type: message`` text goes to XCom under :data:`~airflow_mlops.core.summary.ERROR_XCOM_KEY`,
    masked like Airflow's task logs (plus URI user-info) and capped. Airflow logs and swallows
    an exception of a callback, so the task's own error is never hidden.
    """
    from airflow_mlops.core.summary import ERROR_XCOM_KEY, cap_error, describe_error

    error, ti = context.get("exception"), context.get("ti")
    if error is None or not hasattr(ti, "xcom_push"):  # e.g. a callback run outside the task
        return
    ti.xcom_push(key=ERROR_XCOM_KEY, value={"error": cap_error(mask_error(describe_error(error)))})


def mask_error(text: str) -> str:
    """``text`` with the secrets Airflow masks in logs (connection passwords, sensitive
    variables) and any URI user-info replaced; masked before cutting, so no half secret is
    left."""
    # The module Airflow's own log masking uses (the old execution_time path is deprecated).
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_mlops.core.mlflow_settings import redact_text

    return redact_text(str(redact(text)))


class MlopsHookMixin:
    """The hooks of ``mlflow_conn_id`` and ``aws_conn_id``, built once per task.

    Shared by operators and sensors (like the Amazon provider's ``AwsBaseHookMixin``), so a
    connection is turned into a hook in one place.
    """

    mlflow_conn_id: str
    aws_conn_id: str | None = "aws_default"

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def storage(self) -> Storage:
        return StorageHook(aws_conn_id=self.aws_conn_id).get_storage()


class MlopsBaseOperator(MlopsHookMixin, BaseOperator):
    """Shared parameters and helpers; subclasses stay thin and call ``airflow_mlops.core``.

    :param mlflow_conn_id: MLflow connection (default ``mlflow_default``, or the embedded
        local store when that connection is not defined).
    :param aws_conn_id: AWS connection used for ``s3://`` URIs.
    :param allowed_data_prefixes: when set, every data URI field (a template field ending in
        ``_uri``, except report/model/artifacts URIs) must lie under one of these local
        folders or ``s3://`` prefixes once rendered; checked in :meth:`pre_execute`. Not
        templated: a trigger parameter cannot widen it. The pipeline factories always set it.
    """

    template_fields: Sequence[str] = ("mlflow_conn_id", "aws_conn_id")
    ui_color = "#d5e8f7"

    def __init__(
        self,
        *,
        mlflow_conn_id: str = DEFAULT_CONN_ID,
        aws_conn_id: str | None = "aws_default",
        allowed_data_prefixes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.aws_conn_id = aws_conn_id
        self.allowed_data_prefixes = (
            None if allowed_data_prefixes is None else list(allowed_data_prefixes)
        )
        # Besides any callbacks the user passed (or default_args set).
        if record_task_error not in self.on_failure_callback:
            self.on_failure_callback = [*self.on_failure_callback, record_task_error]

    @property
    def data_uri_fields(self) -> list[str]:
        """Template fields holding data URIs; new ``*_uri`` fields are checked by default."""
        return [
            f for f in self.template_fields if f.endswith("_uri") and f not in NON_DATA_URI_FIELDS
        ]

    def check_data_uris(self) -> None:
        """Refuse any rendered data URI outside :attr:`allowed_data_prefixes` (when set)."""
        if self.allowed_data_prefixes is None:
            return
        for name in self.data_uri_fields:
            value = getattr(self, name, None)
            if isinstance(value, str) and value:
                check_data_uri(value, self.allowed_data_prefixes, name, self.dag_id)

    def pre_execute(self, context: Context) -> None:
        """Runs after templates are rendered, right before :meth:`execute`."""
        super().pre_execute(context)
        self.check_data_uris()

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
            deployment=configured_deployment(),
        )

    def default_report_uri(self, context: Context, name: str) -> str:
        """``<artifacts root>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<name>``."""
        return self.default_report_uri_for(context, name)

    @classmethod
    def default_report_uri_for(cls, context: Context, name: str) -> str:
        """Same as :meth:`default_report_uri`, for ``@task`` functions that have a context."""
        run = cls.run_context(context)
        parts = [path_safe(run.dag_id), path_safe(run.run_id), path_safe(run.task_id)]
        if run.map_index >= 0:
            parts.append(str(run.map_index))
        return join_uri(default_artifacts_root(), *parts, name)
