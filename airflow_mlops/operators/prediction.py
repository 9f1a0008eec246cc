"""BatchPredictionOperator: score a dataset with the champion model, chunk by chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.constants import DEFAULT_CHUNK_ROWS
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.model_uri import model_uri_for, validate_model_uri
from airflow_mlops.core.values import is_templated
from airflow_mlops.hooks.signing import model_trust
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["BatchPredictionOperator"]


class BatchPredictionOperator(MlopsBaseOperator):
    """Score ``input_uri`` with a registered model and write the predictions to ``output_uri``.

    The model is ``models:/<model_name>@<alias>`` (``champion`` by default) or an explicit
    registry ``model_uri``; any other URI (``file://``, ``runs:/``, paths, other hosts) is
    refused before anything is loaded. An alias is resolved to its version first, and the
    output has one row per input row: the ``key_columns``, ``prediction`` (or
    ``prediction_<i>`` for multi-output models), ``model_name`` and ``model_version``.

    The input (parquet or CSV, local or ``s3://``) is scored ``chunk_rows`` rows at a time.
    The output format follows its extension; it is replaced atomically, so a retry overwrites
    it. Returns (XCom) :meth:`airflow_mlops.core.prediction.PredictionResult.to_xcom`.

    :param input_uri: dataset to score (templated).
    :param output_uri: where to write predictions (templated); default
        ``<artifacts root>/<dag>/<run>/<task>/predictions.parquet``.
    :param model_name: registered model name (templated); exclusive with ``model_uri``.
    :param alias: alias of ``model_name`` to load (templated), default ``champion``.
    :param model_uri: explicit ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
        (templated); exclusive with ``model_name``.
    :param key_columns: input columns copied to the output to join predictions back (templated).
    :param feature_columns: columns fed to the model (templated); default: the model
        signature's inputs, else every column but the keys.
    :param chunk_rows: rows scored per chunk (bounds memory).
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
        if (model_name is None) == (model_uri is None):
            raise ConfigError(
                f"{self.task_id}: give exactly one of model_name (with alias) or model_uri."
            )
        # Refuse an unsafe literal URI when the DAG is parsed, not hours later at run time.
        if not any(is_templated(v) for v in (model_name, alias, model_uri)):
            self._requested_model_uri()

    def _requested_model_uri(self) -> str:
        if self.model_uri is not None:
            return validate_model_uri(self.model_uri)
        return model_uri_for(str(self.model_name), alias=self.alias)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.prediction import run_batch_prediction

        model_uri = self._requested_model_uri()
        output_uri = self.output_uri or self.default_report_uri(context, "predictions.parquet")
        try:
            chunk_rows = int(self.chunk_rows)
        except (TypeError, ValueError):
            raise ConfigError(f"chunk_rows must be an integer, got {self.chunk_rows!r}.") from None
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
            )
            experiment_id = (
                client.get_run(result.model_run_id).info.experiment_id
                if result.model_run_id
                else None
            )
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
        return result.to_xcom()
