"""BatchPredictionOperator: score a dataset with the champion model, chunk by chunk, into
one file or into one partition per run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.constants import DEFAULT_CHUNK_ROWS
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.model_uri import model_uri_for, validate_model_uri
from airflow_mlops.core.prediction_layout import (
    DEFAULT_PARTITION_COLUMN,
    is_partitioned_output,
    partition_key,
    partition_output_uri,
    writer_hash,
)
from airflow_mlops.core.values import is_templated
from airflow_mlops.hooks.signing import model_trust
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, as_data_window, window_param

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow

__all__ = ["BatchPredictionOperator"]


class BatchPredictionOperator(MlopsBaseOperator):
    """Score ``input_uri`` with a registered model and write the predictions to ``output_uri``.

    The model is ``models:/<model_name>@<alias>`` (``champion`` by default) or an explicit
    registry ``model_uri``; any other URI (``file://``, ``runs:/``, paths, other hosts) is
    refused before anything is loaded. An alias is resolved to its version first, and the
    output has one row per input row: the ``key_columns``, ``prediction`` (or
    ``prediction_<i>`` for multi-output models), ``model_name`` and ``model_version``.

    The input is a parquet/CSV file (streamed ``chunk_rows`` rows at a time) or a dataset: a
    folder or prefix (Hive partitions included) or a glob, read within ``window`` ending
    ``window_end`` as training reads (``docs/data.md``); local or ``s3://``.

    ``output_uri`` naming a file: the predictions go to that file (format by extension).
    ``output_uri`` naming a folder or prefix: the run writes ONE partition,
    ``<output_uri>/dt=<partition>/part-<writer>.parquet``, keyed by ``partition`` (default:
    ``window_end``, else the run's ``ds``); ``<writer>`` hashes the DAG, task and map index,
    so a retry or a rerun of the partition overwrites the same file. That mode needs
    ``key_columns`` (the ids the decay check joins labels by) and adds the classifier's
    probabilities (``score``, or ``score_<class>``) when the model has them. Either way the
    file is replaced atomically. Returns (XCom)
    :meth:`airflow_mlops.core.prediction.PredictionResult.to_xcom`.

    ``shadow=True`` (partition mode, ``model_name`` given): when ``@challenger`` names another
    version than the alias scored, that version scores the same rows into
    ``<output_uri>/_shadow/dt=<partition>/part-<writer>.parquet`` (same columns; readers skip
    ``_`` folders, so consumers still read only the champion's rows). The XCom adds
    ``shadow``: ``{output_uri, model_version, rows, output_sha256}``, or ``{skipped: why}``.

    :param input_uri: file or dataset to score (templated).
    :param output_uri: where to write predictions (templated): a file, or a folder/prefix
        for one partition per run; default
        ``<artifacts root>/<dag>/<run>/<task>/predictions.parquet``.
    :param window: which partitions of a dataset input to score (``"all"`` by default, or a
        :class:`~airflow_mlops.core.data_window.DataWindow` mapping; templated).
    :param window_end: the newest partition of the input to read, and the default partition
        key of the output (templated).
    :param partition: the output partition key, e.g. ``2026-12-01`` or ``dt=2026-12-01``
        (templated); default ``window_end``, else ``{{ ds }}``.
    :param model_name: registered model name (templated); exclusive with ``model_uri``.
    :param alias: alias of ``model_name`` to load (templated), default ``champion``.
    :param model_uri: explicit ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
        (templated); exclusive with ``model_name``.
    :param key_columns: input columns copied to the output to join predictions back (templated).
    :param feature_columns: columns fed to the model (templated); default: the model
        signature's inputs, else every column but the keys.
    :param chunk_rows: rows scored per chunk (bounds memory).
    :param shadow: also score ``@challenger`` in shadow (see above).
    :param challenger_alias: the alias scored in shadow (default ``challenger``).
    :param trust_unsigned_models: load a version this provider did not train and sign
        (default False: such a version is refused with ``UntrustedModelError`` before it
        is unpickled; see ``docs/security.md``).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "input_uri",
        "output_uri",
        "model_name",
        "alias",
        "model_uri",
        "key_columns",
        "feature_columns",
        "chunk_rows",
        "window",
        "window_end",
        "partition",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f7e6d5"

    def __init__(
        self,
        *,
        input_uri: str,
        output_uri: str | None = None,
        model_name: str | None = None,
        alias: str = "champion",
        model_uri: str | None = None,
        key_columns: Sequence[str] | None = None,
        feature_columns: Sequence[str] | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        trust_unsigned_models: bool = False,
        window: str | Mapping[str, Any] | DataWindow | None = None,
        window_end: str | None = None,
        partition: str | None = None,
        shadow: bool = False,
        challenger_alias: str = "challenger",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_uri = input_uri
        self.output_uri = output_uri
        self.model_name = model_name
        self.alias = alias
        self.model_uri = model_uri
        self.key_columns = list(key_columns) if key_columns is not None else []
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.chunk_rows = chunk_rows
        self.trust_unsigned_models = trust_unsigned_models
        self.window = window_param(window)
        self.window_end = window_end
        self.partition = partition
        self.shadow = shadow is True
        self.challenger_alias = challenger_alias
        self._openlineage_facts: dict[str, Any] = {}
        if output_uri and not is_templated(output_uri):
            self._check_ids_for(output_uri)
        if (model_name is None) == (model_uri is None):
            raise ConfigError(
                f"{self.task_id}: give exactly one of model_name (with alias) or model_uri."
            )
        if self.shadow and model_name is None:
            raise ConfigError(
                f"{self.task_id}: shadow scoring needs model_name (its @{challenger_alias} is "
                "scored beside the champion), not model_uri."
            )
        literal = output_uri and not is_templated(output_uri)
        if self.shadow and literal and not is_partitioned_output(str(output_uri)):
            raise ConfigError(
                f"{self.task_id}: shadow scoring needs output_uri to be a folder or prefix "
                f"(one partition per run), got {output_uri!r}."
            )
        # Refuse an unsafe literal URI when the DAG is parsed, not hours later at run time.
        if not any(is_templated(v) for v in (model_name, alias, model_uri)):
            self._requested_model_uri()

    def _requested_model_uri(self) -> str:
        if self.model_uri is not None:
            return validate_model_uri(self.model_uri)
        return model_uri_for(str(self.model_name), alias=self.alias)

    def _check_ids_for(self, output_uri: str) -> None:
        if is_partitioned_output(output_uri) and not self.key_columns:
            raise ConfigError(
                f"{self.task_id}: output_uri {output_uri!r} is a folder (one partition per "
                "run): give key_columns (data.id_columns), the ids labels are joined by."
            )

    def _partition_target(self, context: Context, folder: str) -> tuple[str, str]:
        """(the file this run writes under ``folder``, its partition ``dt=<key>``)."""
        self._check_ids_for(folder)
        column, key = partition_key(
            self.partition or self.window_end or context["ds"], DEFAULT_PARTITION_COLUMN
        )
        run = self.run_context(context)
        writer = writer_hash(run.dag_id, run.task_id, run.map_index)
        return partition_output_uri(folder, f"{column}={key}", writer), f"{column}={key}"

    def _input_filesystem(self, window: DataWindow) -> Any:
        """The input's filesystem when it is read as a dataset (a single file is streamed)."""
        from airflow_mlops.core.prediction_layout import is_dataset_input, reads_a_window
        from airflow_mlops.hooks.storage import StorageHook

        windowed = reads_a_window(window, self.window_end)
        if not is_dataset_input(self.input_uri, windowed=windowed):
            return None
        return StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem(self.input_uri)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.prediction import run_batch_prediction

        model_uri = self._requested_model_uri()
        output_uri = self.output_uri or self.default_report_uri(context, "predictions.parquet")
        partition = None
        if is_partitioned_output(output_uri):
            output_uri, partition = self._partition_target(context, output_uri)
        try:
            chunk_rows = int(self.chunk_rows)
        except (TypeError, ValueError):
            raise ConfigError(f"chunk_rows must be an integer, got {self.chunk_rows!r}.") from None
        window = as_data_window(self.window)
        hook = self.mlflow_hook
        trust = model_trust(self.trust_unsigned_models is True)
        with hook.session() as client:
            result = run_batch_prediction(
                client=client,
                storage=self.storage,
                model_uri=model_uri,
                input_uri=self.input_uri,
                output_uri=output_uri,
                key_columns=self.key_columns,
                feature_columns=self.feature_columns,
                chunk_rows=chunk_rows,
                allowed_registry_uri=hook.settings.registry_uri or hook.tracking_uri,
                trust=trust,
                fs=self._input_filesystem(window),
                window=window,
                window_end=self.window_end or None,
                with_scores=partition is not None,
                partition=partition,
            )
            experiment_id = (
                client.get_run(result.model_run_id).info.experiment_id
                if result.model_run_id
                else None
            )
            shadow = None
            if self.shadow:
                shadow = self._score_shadow(client, result, output_uri, chunk_rows, window, trust)
        self.log.info(
            "Scored %d rows in %d chunks with %s (requested %s) -> %s",
            result.rows,
            result.chunks,
            result.model_uri,
            result.requested_model_uri,
            result.output_uri,
        )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=experiment_id,
            run_id=result.model_run_id,
            model_name=result.model_name,
            model_version=result.model_version,
        )
        # For OpenLineage: the predictions' folder when one partition was written into it.
        self._openlineage_facts = {
            "result": result.to_xcom(),
            "output_uri": self.output_uri if partition is not None else output_uri,
            "tracking_uri": hook.tracking_uri,
        }
        xcom = result.to_xcom()
        if self.shadow:
            xcom["shadow"] = shadow
        return xcom

    def _score_shadow(
        self,
        client: Any,
        champion: Any,
        output_uri: str,
        chunk_rows: int,
        window: DataWindow,
        trust: Any,
    ) -> dict[str, Any]:
        """Score ``@challenger`` into the shadow partition (same rows, same writer name)."""
        from airflow_mlops.core.prediction import run_batch_prediction
        from airflow_mlops.core.prediction_layout import shadow_predictions_uri
        from airflow_mlops.core.shadow import shadow_challenger

        if champion.partition is None:
            raise ConfigError(
                f"{self.task_id}: shadow scoring needs output_uri to be a folder or prefix "
                "(one partition per run)."
            )
        hook = self.mlflow_hook
        registry = hook.settings.registry_uri or hook.tracking_uri
        challenger = shadow_challenger(
            client,
            champion.model_name,
            champion.model_version,
            alias=str(self.challenger_alias),
            allowed_registry_uri=registry,
        )
        if challenger is None:
            reason = f"no @{self.challenger_alias} other than version {champion.model_version}"
            self.log.info("Shadow scoring skipped: %s", reason)
            return {"skipped": reason}
        # Same partition and file name as the champion's, under <predictions>/_shadow.
        folder = str(self.output_uri or output_uri)
        name = output_uri.rsplit("/", 1)[-1]
        target = f"{shadow_predictions_uri(folder)}/{champion.partition}/{name}"
        result = run_batch_prediction(
            client=client,
            storage=self.storage,
            model_uri=challenger.pinned_uri,
            input_uri=self.input_uri,
            output_uri=target,
            key_columns=self.key_columns,
            feature_columns=self.feature_columns,
            chunk_rows=chunk_rows,
            allowed_registry_uri=registry,
            trust=trust,
            fs=self._input_filesystem(window),
            window=window,
            window_end=self.window_end or None,
            with_scores=True,
            partition=champion.partition,
        )
        self.log.info("Shadow: scored %d rows with %s -> %s", result.rows, result.model_uri, target)
        return {
            "output_uri": result.output_uri,
            "model_version": result.model_version,
            "rows": result.rows,
            "output_sha256": result.output_sha256,
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the provider's listener): the scored data and the model
        version -> the predictions written."""
        from airflow_mlops.openlineage import prediction_lineage

        facts = getattr(self, "_openlineage_facts", None) or {}
        return prediction_lineage(
            facts.get("result"),
            facts.get("tracking_uri", ""),
            input_uri=str(self.input_uri),
            output_uri=facts.get("output_uri"),
        )
