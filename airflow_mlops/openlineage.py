"""OpenLineage: the datasets and facets the operators report (the ``openlineage`` extra).

Airflow's OpenLineage listener calls an operator's ``get_openlineage_facets_on_complete``
after ``execute()``; the operators here answer from what the task already returned (its
XCom result, kept on the operator instance) and, for training, from what its MLflow run
recorded (tags and ``mlops/manifest.json``): no data file is read again.

Naming follows the OpenLineage naming spec: a local path is namespace ``file``, name the
absolute path; ``s3://bucket/key`` is namespace ``s3://bucket``, name ``key``; a folder,
prefix or glob is one dataset named by its folder, the files read are in the
``mlopsManifest`` facet. MLflow objects live in the namespace of the tracking server
(``http://host:port``; never user-info, query or fragment): a logged model is
``models/<model id>``, a registered model version ``models/<name>/<version>``.

Import-light on purpose: OpenLineage (the provider and its client) is imported inside the
functions that build its objects, which only the provider's listener calls, so an install
without the extra, and DAG parsing, are unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow_mlops.hooks.mlflow import MlflowHook

__all__ = [
    "FACET_MANIFEST",
    "FACET_MLFLOW_RUN",
    "FACET_MODEL_VERSION",
    "FACET_VALIDATION",
    "MAX_LISTED_FILES",
    "dataset_identity",
    "drift_lineage",
    "file_dataset",
    "manifest_facet_values",
    "mlflow_namespace",
    "mlflow_run_facets",
    "model_dataset",
    "operator_lineage",
    "prediction_lineage",
    "recorded_training_data",
    "registration_lineage",
    "training_lineage",
    "validation_lineage",
]

#: Custom facet keys (prefixed with the project, as the spec asks of custom facets).
FACET_MANIFEST = "mlopsManifest"
FACET_MLFLOW_RUN = "mlopsMlflowRun"
FACET_MODEL_VERSION = "mlopsModelVersion"
FACET_VALIDATION = "mlopsValidation"
#: Files listed in a manifest facet; more are counted in ``filesOmitted`` (the full list
#: stays in the run's ``mlops/manifest.json``), so one event stays small.
MAX_LISTED_FILES = 500
# No published JSON schema for the custom facets (yet): a URN names each facet and its
# version instead; docs/governance.md ("OpenLineage") describes the fields.
_SCHEMA_BASE = "urn:airflow-mlops:openlineage:facets:1"
_GLOB_CHARS = "*?["


# -- names (no OpenLineage import) -------------------------------------------------------------
def _clean_path(path: str) -> str:
    """The folder a glob starts from, without a trailing slash."""
    cut = min((path.find(c) for c in _GLOB_CHARS if c in path), default=-1)
    if cut >= 0:
        path = path[:cut].rsplit("/", 1)[0]
    return path.rstrip("/") or "/"


def dataset_identity(uri: str) -> tuple[str, str]:
    """(namespace, name) of a data URI: ``file`` + absolute path, or ``scheme://host`` +
    path. User-info, query string and fragment are dropped (they may hold credentials)."""
    text = str(uri).strip()
    parts = urlsplit(text)
    if not parts.scheme or len(parts.scheme) == 1 or parts.scheme == "file":  # C:\ too
        path = parts.path if parts.scheme == "file" else text
        return "file", _clean_path(os.path.abspath(path) if not path.startswith("/") else path)
    host = parts.hostname or ""
    if parts.scheme in ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "wasbs"):
        return f"{parts.scheme}://{host}", _clean_path(parts.path).lstrip("/")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}", _clean_path(parts.path)


def mlflow_namespace(tracking_uri: str) -> str:
    """The tracking server as an OpenLineage namespace: ``scheme://host[:port][/path]``, or
    ``scheme:path`` for a store without a host (``sqlite:///…``); never credentials."""
    text = str(tracking_uri).strip()
    if text in ("databricks", "databricks-uc"):  # MLflow's names for those servers
        return text
    parts = urlsplit(text)
    if not parts.scheme or len(parts.scheme) == 1:
        return f"file:{os.path.abspath(text)}"
    path = parts.path.rstrip("/")
    if parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{path}"
    return f"{parts.scheme}:{path}" if path else parts.scheme


def _model_name(model_uri: str) -> str:
    """``models:/m-abc`` -> ``models/m-abc``; ``runs:/<id>/model`` -> ``runs/<id>/model``."""
    parts = urlsplit(str(model_uri).strip())
    return f"{parts.scheme}/{parts.path.lstrip('/')}" if parts.scheme else parts.path


def manifest_facet_values(
    uri: str,
    manifest: Mapping[str, Any] | None = None,
    **facts: Any,
) -> dict[str, Any]:
    """The ``mlopsManifest`` facet's fields: the URI as configured (credentials dropped),
    the manifest's content hash, file count, bytes and at most :data:`MAX_LISTED_FILES`
    files (path, size, sha256, partition); ``facts`` (``contentHash``, ``fileCount``,
    ``window``, ``rows``, ``partition``, ``runId``…) fill or override, ``None`` ones dropped."""
    files = list((manifest or {}).get("files") or [])
    values: dict[str, Any] = {"uri": _safe_uri(uri)}
    if manifest is not None:
        values.update(
            contentHash=manifest.get("content_hash"),
            fileCount=len(files),
            totalBytes=sum(int(f.get("size") or 0) for f in files),
            files=[
                {k: f.get(k) for k in ("path", "size", "sha256", "partition")}
                for f in files[:MAX_LISTED_FILES]
            ],
            filesOmitted=max(0, len(files) - MAX_LISTED_FILES),
        )
    values.update({k: v for k, v in facts.items() if v is not None})
    return values


def _safe_uri(uri: str) -> str:
    """``uri`` without user-info, query string or fragment."""
    parts = urlsplit(str(uri).strip())
    if not parts.scheme or len(parts.scheme) == 1:
        return str(uri).strip()
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def _finite(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


# -- OpenLineage objects (imported lazily) -----------------------------------------------------
@functools.cache
def _facet_types() -> dict[str, type]:
    """The custom facet classes, defined on first use (OpenLineage is imported here)."""
    import attr
    from airflow.providers.common.compat.openlineage.facet import DatasetFacet, RunFacet

    # Field names are camelCase, as OpenLineage spells facet fields.
    @attr.define
    class MlopsManifestDatasetFacet(DatasetFacet):
        """The files a task read or wrote: content hash, count, bytes, the files."""

        uri: str
        contentHash: str | None = None
        fileCount: int | None = None
        totalBytes: int | None = None
        files: list[dict[str, Any]] | None = None
        filesOmitted: int | None = None
        window: str | None = None
        rows: int | None = None
        partition: str | None = None
        runId: str | None = None
        manifestArtifact: str | None = None

        @staticmethod
        def _get_schema() -> str:
            return f"{_SCHEMA_BASE}#/$defs/MlopsManifestDatasetFacet"

    @attr.define
    class MlopsModelVersionDatasetFacet(DatasetFacet):
        """A registered model version: where it came from and its aliases."""

        name: str
        version: str
        runId: str | None = None
        sourceModelUri: str | None = None
        status: str | None = None
        aliases: list[str] | None = None

        @staticmethod
        def _get_schema() -> str:
            return f"{_SCHEMA_BASE}#/$defs/MlopsModelVersionDatasetFacet"

    @attr.define
    class MlopsMlflowRunFacet(RunFacet):
        """The MLflow run a task created or used."""

        runId: str
        trackingUri: str
        experimentId: str | None = None
        modelUri: str | None = None
        reused: bool | None = None
        metrics: dict[str, Any] | None = None

        @staticmethod
        def _get_schema() -> str:
            return f"{_SCHEMA_BASE}#/$defs/MlopsMlflowRunFacet"

    @attr.define
    class MlopsValidationDatasetFacet(DatasetFacet):
        """The data-contract verdict on the data read (the validation task's summary)."""

        success: bool
        suite: str | None = None
        evaluatedExpectations: int | None = None
        failedExpectations: int | None = None
        onFailure: str | None = None
        reportUri: str | None = None

        @staticmethod
        def _get_schema() -> str:
            return f"{_SCHEMA_BASE}#/$defs/MlopsValidationDatasetFacet"

    return {
        FACET_MANIFEST: MlopsManifestDatasetFacet,
        FACET_MODEL_VERSION: MlopsModelVersionDatasetFacet,
        FACET_MLFLOW_RUN: MlopsMlflowRunFacet,
        FACET_VALIDATION: MlopsValidationDatasetFacet,
    }


def file_dataset(
    kind: str,
    uri: str,
    manifest_values: Mapping[str, Any] | None = None,
    *,
    version: str | None = None,
    rows: int | None = None,
) -> Any:
    """An ``InputDataset`` or ``OutputDataset`` (``kind`` ``input``/``output``) for a data
    URI, with the ``mlopsManifest`` facet (:func:`manifest_facet_values`), the dataset
    version (``version``, else the content hash) and the input/output statistics."""
    from airflow.providers.common.compat.openlineage.facet import InputDataset, OutputDataset
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    from openlineage.client.generated.input_statistics_input_dataset import (
        InputStatisticsInputDatasetFacet,
    )
    from openlineage.client.generated.output_statistics_output_dataset import (
        OutputStatisticsOutputDatasetFacet,
    )

    namespace, name = dataset_identity(uri)
    values = dict(manifest_values or {})
    facets: dict[str, Any] = {}
    if values:
        facets[FACET_MANIFEST] = _facet_types()[FACET_MANIFEST](**values)
    version = version or values.get("contentHash")
    if version:
        facets["version"] = DatasetVersionDatasetFacet(datasetVersion=str(version))
    stats = {
        "rowCount": _int(rows if rows is not None else values.get("rows")),
        "size": _int(values.get("totalBytes")),
        "fileCount": _int(values.get("fileCount")),
    }
    stats = {k: v for k, v in stats.items() if v is not None}
    if kind == "input":
        extra = {"inputStatistics": InputStatisticsInputDatasetFacet(**stats)} if stats else {}
        return InputDataset(namespace=namespace, name=name, facets=facets, inputFacets=extra)
    extra = {"outputStatistics": OutputStatisticsOutputDatasetFacet(**stats)} if stats else {}
    return OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=extra)


def model_dataset(
    kind: str,
    tracking_uri: str,
    *,
    model_uri: str | None = None,
    name: str | None = None,
    version: str | int | None = None,
    run_id: str | None = None,
    source_model_uri: str | None = None,
    status: str | None = None,
    aliases: Sequence[str] | None = None,
) -> Any:
    """An MLflow model as a dataset in the tracking server's namespace: a registered version
    (``name`` and ``version``: ``models/<name>/<version>``, with ``mlopsModelVersion``) or a
    logged model (``model_uri`` ``models:/m-<id>``: ``models/m-<id>``)."""
    from airflow.providers.common.compat.openlineage.facet import InputDataset, OutputDataset
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

    facets: dict[str, Any] = {}
    if name and version not in (None, ""):
        dataset_name = f"models/{name}/{version}"
        facets["version"] = DatasetVersionDatasetFacet(datasetVersion=str(version))
        facets[FACET_MODEL_VERSION] = _facet_types()[FACET_MODEL_VERSION](
            name=str(name),
            version=str(version),
            runId=run_id,
            sourceModelUri=source_model_uri,
            status=status,
            aliases=[str(a) for a in aliases or () if a],
        )
    elif model_uri:
        dataset_name = _model_name(model_uri)
    else:
        raise ValueError("model_dataset needs name and version, or model_uri")
    cls = InputDataset if kind == "input" else OutputDataset
    return cls(namespace=mlflow_namespace(tracking_uri), name=dataset_name, facets=facets)


def mlflow_run_facets(
    tracking_uri: str,
    run_id: str | None,
    *,
    experiment_id: str | None = None,
    model_uri: str | None = None,
    reused: bool | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"mlopsMlflowRun": facet}`` naming the MLflow run; empty without a run id."""
    if not run_id:
        return {}
    facet = _facet_types()[FACET_MLFLOW_RUN](
        runId=str(run_id),
        trackingUri=_safe_uri(tracking_uri),
        experimentId=None if experiment_id is None else str(experiment_id),
        modelUri=model_uri,
        reused=reused,
        # Only finite numbers: NaN is not JSON, and an event must serialize.
        metrics={k: v for k, v in (metrics or {}).items() if _finite(v)} or None,
    )
    return {FACET_MLFLOW_RUN: facet}


def operator_lineage(
    inputs: Sequence[Any] = (),
    outputs: Sequence[Any] = (),
    run_facets: Mapping[str, Any] | None = None,
) -> Any:
    """The provider's ``OperatorLineage``."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=list(inputs), outputs=list(outputs), run_facets=dict(run_facets or {})
    )


# -- per operator ------------------------------------------------------------------------------
def recorded_training_data(
    hook: MlflowHook, run_id: str
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """(tags, manifest dict or ``None``) of a training run: what it recorded about the data
    it read (``mlops.data.*`` tags, ``mlops/manifest.json``). Reads MLflow, never the data."""
    from airflow_mlops.core.comparison import run_manifest

    with hook.session() as client:
        tags = dict(client.get_run(run_id).data.tags)
        manifest = run_manifest(client, run_id)
    return tags, None if manifest is None else manifest.to_dict()


def training_lineage(
    train_uri: str,
    result: Mapping[str, Any] | None,
    tracking_uri: str,
    tags: Mapping[str, str] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Any:
    """Training: the window it read (input, with its manifest) -> the logged model, the
    holdout and the drift reference (outputs); the MLflow run as a run facet. Without a
    result (the task failed) only the input, by URI."""
    from airflow_mlops.core import lineage as tag

    tags = tags or {}
    values = manifest_facet_values(
        train_uri,
        manifest,
        contentHash=tags.get(tag.TAG_DATA_MANIFEST_HASH) or None,
        fileCount=_int(tags.get(tag.TAG_DATA_FILES)),
        window=tags.get(tag.TAG_DATA_WINDOW) or None,
        rows=_int(tags.get(tag.TAG_DATA_ROWS)),
        runId=(result or {}).get("run_id"),
        manifestArtifact=tag.MANIFEST_ARTIFACT_PATH if manifest is not None else None,
    )
    inputs = [file_dataset("input", train_uri, values)]
    if not result:
        return operator_lineage(inputs)
    outputs = [model_dataset("output", tracking_uri, model_uri=result["model_uri"])]
    for key, digest in (("holdout_uri", "holdout_sha256"), ("reference_uri", None)):
        if result.get(key):
            outputs.append(
                file_dataset("output", result[key], version=result.get(digest) if digest else None)
            )
    run_facets = mlflow_run_facets(
        tracking_uri,
        result.get("run_id"),
        experiment_id=result.get("experiment_id"),
        model_uri=result.get("model_uri"),
        reused=result.get("reused"),
        metrics=result.get("metrics"),
    )
    return operator_lineage(inputs, outputs, run_facets)


def validation_lineage(
    data_uri: str,
    summary: Mapping[str, Any] | None,
    manifest: Mapping[str, Any] | None,
    report_uri: str | None,
) -> Any:
    """Validation: the window it checked (input, with its manifest, row count and the
    ``mlopsValidation`` verdict) -> the full result JSON (output)."""
    summary = summary or {}
    values = manifest_facet_values(
        data_uri,
        manifest,
        contentHash=summary.get("manifest_hash"),
        fileCount=_int(summary.get("files")),
        window=summary.get("window"),
        rows=_int(summary.get("row_count")),
    )
    source = file_dataset("input", data_uri, values)
    if "success" in summary:
        source.facets[FACET_VALIDATION] = _facet_types()[FACET_VALIDATION](
            success=bool(summary["success"]),
            suite=summary.get("suite_name"),
            evaluatedExpectations=_int(summary.get("evaluated_expectations")),
            failedExpectations=_int(summary.get("failed_expectations")),
            onFailure=summary.get("on_failure"),
            reportUri=_safe_uri(report_uri) if report_uri else None,
        )
    outputs = [file_dataset("output", report_uri)] if summary and report_uri else []
    return operator_lineage([source], outputs)


def registration_lineage(result: Mapping[str, Any] | None, tracking_uri: str) -> Any:
    """Registration: the logged model (input) -> the registered version (output); the
    training run as a run facet."""
    if not result:
        return operator_lineage()
    inputs = []
    if result.get("source_model_uri"):
        inputs.append(model_dataset("input", tracking_uri, model_uri=result["source_model_uri"]))
    alias = result.get("challenger_alias")
    output = model_dataset(
        "output",
        tracking_uri,
        name=result["model_name"],
        version=result["version"],
        run_id=result.get("run_id"),
        source_model_uri=result.get("source_model_uri"),
        status=result.get("status"),
        aliases=[alias] if alias and result.get("challenger_move") else None,
    )
    run_facets = mlflow_run_facets(
        tracking_uri, result.get("run_id"), model_uri=result.get("model_uri")
    )
    return operator_lineage(inputs, [output], run_facets)


def prediction_lineage(
    result: Mapping[str, Any] | None,
    tracking_uri: str,
    *,
    input_uri: str,
    output_uri: str | None,
) -> Any:
    """Prediction: the scored data and the model version (inputs) -> the predictions
    (output: the folder of a partitioned output, the partition and file in its facet)."""
    if not result:
        return operator_lineage([file_dataset("input", input_uri)])
    source = manifest_facet_values(
        input_uri, contentHash=result.get("input_sha256"), fileCount=result.get("input_files")
    )
    inputs = [
        file_dataset("input", input_uri, source),
        model_dataset(
            "input",
            tracking_uri,
            name=result["model_name"],
            version=result["model_version"],
            run_id=result.get("model_run_id"),
        ),
    ]
    written = result["output_uri"]
    target = manifest_facet_values(
        output_uri or written,
        {"files": [{"path": written, "sha256": result.get("output_sha256")}]},
        contentHash=result.get("output_sha256"),
        partition=result.get("partition"),
        rows=_int(result.get("rows")),
    )
    target.pop("totalBytes", None)  # the size of the file is not recorded
    outputs = [file_dataset("output", output_uri or written, target)]
    return operator_lineage(inputs, outputs)


def drift_lineage(result: Mapping[str, Any] | None, tracking_uri: str) -> Any:
    """Drift check: the champion's reference, the current data and the champion version
    (inputs) -> the HTML report and the JSON summary (outputs)."""
    if not result:
        return operator_lineage()
    inputs = [
        file_dataset("input", result[key])
        for key in ("reference_uri", "current_uri")
        if result.get(key)
    ]
    if result.get("model_name") and result.get("champion_version") not in (None, ""):
        inputs.append(
            model_dataset(
                "input",
                tracking_uri,
                name=result["model_name"],
                version=result["champion_version"],
                run_id=result.get("mlflow_run_id"),
                aliases=["champion"],
            )
        )
    outputs = [
        file_dataset("output", result[key])
        for key in ("report_uri", "summary_uri")
        if result.get(key)
    ]
    return operator_lineage(inputs, outputs)
