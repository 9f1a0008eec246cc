"""DataValidationOperator: the data-contract gate of a continuous-training pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.core.errors import ConfigError, DataNotFoundError, DataValidationFailed
from airflow_mlops.core.suite import check_on_failure, check_result_format
from airflow_mlops.core.values import is_templated
from airflow_mlops.operators.base import MlopsBaseOperator, as_data_window

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.suite import SuiteDefinition
    from airflow_mlops.core.validation import ValidationOutcome

__all__ = [
    "REPORT_NAME",
    "DataValidationOperator",
    "ValidationGateFailed",
]

REPORT_NAME = "validation_result.json"


class ValidationGateFailed(DataValidationFailed, AirflowFailException):
    """Data broke its contract. Fails the task without retries: the same data fails again."""


class DataValidationOperator(MlopsBaseOperator):
    """Validate a table against a Great Expectations 1.x suite before anything trains on it.

    The data is read in ``execute()`` only (never at DAG-parse time): a parquet/csv file, a
    folder or prefix of such files (Hive ``key=value/`` partitions included) or a glob, local
    or ``s3://``, through ``pyarrow.dataset`` (:func:`~airflow_mlops.core.data_window.read_window`);
    only the files and rows of ``window`` are validated, all of them as one table, with an
    ephemeral GX context; GX writes nothing and sends nothing. The full GX result goes to
    ``report_uri``; XCom gets a small JSON summary (schema in ``docs/operators/validation.md``,
    plus ``files``, ``window`` and ``manifest_hash``), never the data.

    Bad input (missing/empty/unreadable file, a partition whose schema differs, unknown
    extension, invalid suite) always fails the task, with an error naming the file. Data that
    breaks the suite follows ``on_failure``:

    * ``fail`` (default): raise :class:`~airflow_mlops.core.errors.DataValidationFailed`
      whose message has one line per failed expectation;
    * ``skip``: the task is skipped, so downstream tasks (default trigger rule) skip too and
      the run is not failed;
    * ``warn``: log the failures and succeed; the summary says what failed.

    The summary is pushed to XCom (``return_value``) under every policy.

    :param data_uri: file, folder/prefix or glob to validate (templated).
    :param window: the ``data.window`` setting (a ``DataWindow``, its mapping or ``"all"``,
        the default): which partitions and rows of ``data_uri`` are validated.
    :param window_end: the partition the window ends with (templated; empty: the newest),
        e.g. the partition an asset event announced.
    :param suite: a GX 1.x suite JSON file (path, absolute or relative to the working
        directory, the DAG folder, its parent (``include/...``) or ``$AIRFLOW_HOME``; or an
        ``s3://`` URI), a suite dict, or a list of expectation configs
        ``[{"type": ..., "kwargs": {...}}]`` (templated).
    :param result_format: GX result format for the report: ``BOOLEAN_ONLY``, ``BASIC``,
        ``SUMMARY`` (default) or ``COMPLETE`` (templated).
    :param on_failure: ``fail``, ``skip`` or ``warn`` (templated).
    :param report_uri: where the full result JSON goes (templated); default
        ``<artifacts root>/<dag_id>/<run_id>/<task_id>/validation_result.json``.
    :param mlflow_run_id: when set, the result and the summary are logged as artifacts of this
        MLflow run under ``validation/<task_id>/`` (templated).
    :param builtin_checks: also fail an empty table and entirely-null columns the suite names,
        which GX alone passes (default True).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "data_uri",
        "window_end",
        "suite",
        "result_format",
        "on_failure",
        "report_uri",
        "mlflow_run_id",
    )
    template_fields_renderers = {"suite": "json"}
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        data_uri: str,
        suite: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        result_format: str = "SUMMARY",
        on_failure: str = "fail",
        report_uri: str | None = None,
        mlflow_run_id: str | None = None,
        builtin_checks: bool = True,
        window: DataWindow | Mapping[str, Any] | str | None = None,
        window_end: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_uri = data_uri
        self.window = window
        self.window_end = window_end
        self.suite = suite
        self.result_format = result_format
        self.on_failure = on_failure
        self.report_uri = report_uri
        self.mlflow_run_id = mlflow_run_id
        self.builtin_checks = builtin_checks
        # What the task read and wrote, for OpenLineage (get_openlineage_facets_on_complete).
        self._openlineage_facts: dict[str, Any] = {}
        # Catch typos at parse time when the value is not a template.
        if not is_templated(on_failure):
            check_on_failure(on_failure)
        if not is_templated(result_format):
            check_result_format(result_format)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import validation as core

        on_failure = check_on_failure(self.on_failure)
        result_format = check_result_format(self.result_format)
        if not isinstance(self.data_uri, str) or not self.data_uri.strip():
            raise ConfigError(f"data_uri must be a non-empty string, got {self.data_uri!r}.")
        # Suite first: a broken suite fails before any data is read or anything is written.
        suite = self.load_suite(context)
        data_uri = self.data_uri.strip()
        frame, lineage = self._read_window(data_uri)
        report_uri = self.report_uri or self.default_report_uri(context, REPORT_NAME)
        outcome = core.validate_frame(
            frame,
            suite,
            result_format=result_format,
            data_uri=data_uri,
            data_sha256=lineage.pop("data_sha256"),
            report_uri=report_uri,
            builtin_checks=bool(self.builtin_checks),
        )
        del frame  # not needed any more; free it before writing reports
        report_text = outcome.report_json()
        self.storage.write_text(report_uri, report_text)
        self.log.info("Full validation result written to %s", report_uri)
        summary = {**outcome.summary, **lineage, "on_failure": on_failure}
        self._openlineage_facts.update(summary=summary, report_uri=report_uri)
        if self.mlflow_run_id:
            self._attach_to_mlflow_run(str(self.mlflow_run_id), report_text, summary)
        return self._apply_policy(on_failure, outcome, summary, context)

    # -- data -----------------------------------------------------------------------------------
    def _read_window(self, uri: str) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The window's rows, and its lineage: ``data_sha256`` (the bytes' sha256 when the URI
        names one file), ``manifest_hash`` (the files' manifest content hash: the value a
        training run on the same window tags as ``mlops.data.sha256``), ``files``, ``window``."""
        from airflow_mlops.core.data_window import read_window
        from airflow_mlops.core.manifest import build_manifest
        from airflow_mlops.hooks.storage import StorageHook

        window = as_data_window(self.window)
        fs = StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem(uri)
        try:
            read = read_window(fs, uri, window, end=self.window_end or None)
        except DataNotFoundError as err:
            if not _names_a_file(uri) or fs.exists(uri):
                raise
            # A missing file is named as one, as "nothing at" would leave the reader guessing.
            raise DataNotFoundError(
                f"No {'object' if uri.startswith('s3://') else 'file'} at {uri}."
            ) from err
        manifest = build_manifest(fs, read.files)
        self._openlineage_facts = {"manifest": manifest.to_dict()}
        one_file = _names_a_file(uri) and len(manifest.files) == 1
        return read.frame, {
            "data_sha256": manifest.files[0].sha256 if one_file else None,
            "manifest_hash": manifest.content_hash,
            "files": len(manifest.files),
            "window": window.describe(),
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the provider's listener): the window checked, with its
        manifest, -> the full result JSON. Also on failure: a contract break names the data."""
        from airflow_mlops.openlineage import validation_lineage

        facts = getattr(self, "_openlineage_facts", None) or {}
        return validation_lineage(
            str(self.data_uri).strip(),
            facts.get("summary"),
            facts.get("manifest"),
            facts.get("report_uri"),
        )

    # -- suite ----------------------------------------------------------------------------------
    def load_suite(self, context: Context) -> SuiteDefinition:
        """The checked suite from the rendered ``suite`` field; ConfigError when unusable."""
        from airflow_mlops.core import suite as core

        suite = self.suite
        if isinstance(suite, Mapping | list | tuple):
            return core.parse_suite(
                list(suite) if isinstance(suite, tuple) else suite,
                source=f"suite parameter of task {self.task_id!r}",
                default_name=self.task_id,
            )
        if not isinstance(suite, str) or not suite.strip():
            raise ConfigError(
                "suite must be a suite file path or URI, a suite dict, or a list of "
                f"expectation configs; got {suite!r}."
            )
        text = suite.strip()
        if text.startswith(("{", "[")):  # a template rendered the suite's JSON itself
            return core.parse_suite_text(text, source=f"suite parameter of task {self.task_id!r}")
        if "://" in text:
            try:
                return core.parse_suite_text(self.storage.read_bytes(text), source=text)
            except DataNotFoundError as err:
                raise ConfigError(f"Suite file {text} does not exist.") from err
        return core.read_suite_file(self._resolve_suite_path(text, context))

    def _resolve_suite_path(self, location: str, context: Context) -> Path:
        path = Path(location).expanduser()
        if path.is_absolute():
            return path
        candidates = [Path.cwd() / path]
        dag_file = getattr(context.get("dag"), "fileloc", None)
        if dag_file:
            dag_dir = Path(dag_file).resolve().parent
            candidates += [dag_dir / path, dag_dir.parent / path]
        if os.environ.get("AIRFLOW_HOME"):
            candidates.append(Path(os.environ["AIRFLOW_HOME"]) / path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
        raise ConfigError(f"Suite file {location!r} not found; looked in: {tried}.")

    # -- results --------------------------------------------------------------------------------
    def _attach_to_mlflow_run(self, run_id: str, report_text: str, summary: dict[str, Any]) -> None:
        """Same artifact paths on every try, so a retry overwrites instead of duplicating."""
        folder = f"validation/{self.task_id}"
        with self.mlflow_hook.session() as client:
            client.log_text(run_id, report_text, f"{folder}/result.json")
            client.log_text(run_id, json.dumps(summary, indent=2), f"{folder}/summary.json")
        self.log.info("Validation result attached to MLflow run %s under %s/", run_id, folder)

    def _apply_policy(
        self,
        on_failure: str,
        outcome: ValidationOutcome,
        summary: dict[str, Any],
        context: Context,
    ) -> dict[str, Any]:
        if outcome.success:
            self.log.info(
                "Data validation passed: %s expectations on %s rows of %s.",
                summary["evaluated_expectations"],
                summary["row_count"],
                summary["data_uri"],
            )
            return summary
        message = outcome.failure_message()
        if on_failure == "warn":
            self.log.warning("%s\non_failure='warn': continuing.", message)
            return summary
        # The task will not return: push the summary ourselves so it stays inspectable.
        if self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=summary)
        if on_failure == "skip":
            from airflow.sdk.exceptions import AirflowSkipException

            self.log.warning("%s\non_failure='skip': skipping downstream tasks.", message)
            raise AirflowSkipException(message)
        raise ValidationGateFailed(message, summary)


def _names_a_file(uri: str) -> bool:
    """Whether ``uri`` spells one data file (a table suffix, no glob), not a folder or glob."""
    from airflow_mlops.core.datasets import GLOB_CHARS
    from airflow_mlops.core.storage import TABLE_FORMATS

    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    return not GLOB_CHARS.search(uri) and any(name.endswith(s) for s in TABLE_FORMATS)
