"""Traversal and foreign-URI payloads are refused wherever a model loads or a report is written.

``tests/test_model_uri.py`` unit-tests the two validators. Here the same payloads go through
every *entry point* that loads a model (batch prediction at parse time and at run time,
evaluation from a training run's tags, registration, the serving check) and every place a
report path is built or written, and hypothesis searches for a payload that slips through.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from _fuzz import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_mlops.core.errors import ModelUriError, UnsupportedFormatError

# One line per trick; each must be refused as a *model URI*.
MODEL_PAYLOADS = [
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "FILE:///etc/passwd",
    "/etc/passwd",
    "/proc/self/root/etc/passwd",
    "//proc/self/root/etc/passwd",
    "~/model.pkl",
    "../model",
    "./model",
    "model",
    "models:/../../etc/passwd",
    "models:/churn/../../../etc/passwd",
    "models:/churn/..",
    "models:/%2e%2e/%2e%2e/etc/passwd",
    "models:/churn%2F..%2F..%2Fetc/1",
    "models:/churn\\..\\..\\etc/1",
    "models:\\churn/1",
    "models:/churn/1#/../../etc/passwd",
    "models:/churn@champion#frag",
    "models:/churn/1?path=../../etc",
    "models://proc/self/root/etc/passwd",
    "models:/churn//proc/self/root/etc/passwd",
    "models:////proc/self/root/etc/passwd",
    "models://evil.example.com/churn/1",
    "models://evil.example.com:5000/churn@champion",
    "models://user:pw@evil.example.com/churn/1",
    "models:///churn/1",
    "runs:/0123456789abcdef/model",
    "mlflow-artifacts:/0/abc/artifacts/model",
    "s3://bucket/model",
    "http://evil.example.com/model",
    "https://evil.example.com/model",
    "hdfs://namenode/model",
    "dbfs:/model",
    "models:/churn\uff0e\uff0e/1",  # full-width dots, '..' under NFKC
    "models:/churn\u2025/1",  # two-dot leader, '..' under NFKC
    "models:/churn\u202e/1",  # right-to-left override
    "models:/churn\x00/1",
    "models:/churn\n/1",
    " models:/churn/1",
    "models:/churn/latest",
]

# Each must be refused as a report path under a local base directory.
REPORT_PAYLOADS = [
    "../escape.json",
    "../../../../etc/passwd",
    "a/../../escape.json",
    "/etc/passwd",
    "//proc/self/root/etc/passwd",
    "/proc/self/root/etc/passwd",
    "a\\..\\..\\escape.json",
    "file:///etc/passwd",
    "http://evil.example.com/report.json",
    "s3://bucket/report.json",
    "x#/../../../etc/passwd",
    "x%2f..%2f..%2fescape.json/../../../escape.json",
    "",
    "report\x00.json",
]


@pytest.mark.parametrize("payload", MODEL_PAYLOADS)
def test_batch_prediction_refuses_the_payload_when_the_dag_is_parsed(payload):
    from airflow_mlops.operators.prediction import BatchPredictionOperator

    with pytest.raises(ModelUriError, match="Refused model URI"):
        BatchPredictionOperator(task_id="predict", input_uri="in.parquet", model_uri=payload)


def test_batch_prediction_refuses_a_payload_arriving_at_run_time(run_dag, tmp_path, monkeypatch):
    """A templated URI (e.g. from the trigger form) is checked again before anything loads."""
    from airflow.sdk import DAG

    from airflow_mlops.operators.prediction import BatchPredictionOperator

    # No MLflow connection at all: a refused URI must not need one.
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    failures: list[BaseException] = []
    with DAG(f"rel_paths_predict_{uuid.uuid4().hex[:6]}", schedule=None) as dag:
        BatchPredictionOperator(
            task_id="predict",
            input_uri=str(tmp_path / "in.parquet"),
            output_uri=str(tmp_path / "out.parquet"),
            model_uri="{{ dag_run.conf['model'] }}",
            on_failure_callback=lambda context: failures.append(context["exception"]),
        )
    dag_run = run_dag(dag, model="models:/churn/1#/../../../../etc/passwd")
    assert dag_run.state == "failed"
    (error,) = failures
    assert isinstance(error, ModelUriError) and "'#'" in str(error)
    assert not (tmp_path / "out.parquet").exists()


def test_batch_prediction_in_a_mapped_task_group_builds_and_checks_the_name_at_run_time(
    run_dag, tmp_path, monkeypatch
):
    """Inside a mapped task group the model name is a ``MappedArgument``, known only at run
    time: the DAG must build (it crashed at parse before), and the resolved value is still
    validated before anything loads."""
    from airflow.sdk import DAG, task_group

    from airflow_mlops.operators.prediction import BatchPredictionOperator

    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    failures: list[BaseException] = []
    with DAG(f"rel_paths_mapped_{uuid.uuid4().hex[:6]}", schedule=None) as dag:

        @task_group(group_id="segment")
        def per_segment(model_name):
            BatchPredictionOperator(
                task_id="predict",
                input_uri=str(tmp_path / "in.parquet"),
                output_uri=str(tmp_path / "out.parquet"),
                model_name=model_name,
                on_failure_callback=lambda context: failures.append(context["exception"]),
            )

        per_segment.expand(model_name=["../../etc/passwd"])
    dag_run = run_dag(dag)
    assert dag_run.state == "failed"
    (error,) = failures
    assert isinstance(error, ModelUriError), repr(error)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("payload", ["file:///etc/passwd", "runs:/abc/model", "/etc/passwd",
                                     "models://evil.example.com/churn/1", "models:/a/../../b"])  # fmt: skip
def test_evaluation_refuses_a_poisoned_model_uri_recorded_on_the_training_run(payload, mlflow_up):
    """The challenger's URI comes from the training run's tags: a tampered tag never loads."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.evaluation import challenger_from_training
    from airflow_mlops.core.lineage import (
        TAG_HOLDOUT_SHA256,
        TAG_HOLDOUT_URI,
        TAG_MODEL_URI,
        TAG_TARGET,
        TAG_TASK,
    )

    client = MlflowClient(mlflow_up)
    experiment = client.create_experiment(f"rel-poison-{uuid.uuid4().hex[:8]}")
    run = client.create_run(
        experiment,
        tags={
            TAG_MODEL_URI: payload,
            TAG_HOLDOUT_URI: "/tmp/holdout.parquet",
            TAG_HOLDOUT_SHA256: "0" * 64,
            TAG_TARGET: "label",
            TAG_TASK: "classification",
        },
    )
    with pytest.raises(ModelUriError, match="Refused model URI"):
        challenger_from_training(client, {"run_id": run.info.run_id})


@pytest.mark.parametrize("payload", MODEL_PAYLOADS[:12])
def test_registration_and_the_serving_check_refuse_the_payload_before_any_request(payload):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.serving import serving_check

    dead = MlflowClient("http://127.0.0.1:9")  # nothing listens: any request would fail loudly
    with pytest.raises(ModelUriError):
        register_version(dead, "churn", payload, context=RunContext())
    with pytest.raises(ModelUriError):
        serving_check(payload, pd.DataFrame({"x": [1.0]}))


# Building blocks hypothesis combines into URIs: separators, dot tricks, encodings, hosts.
_SEGMENTS = st.sampled_from(
    ["..", ".", "", "churn", "1", "@champion", "%2e%2e", "%2f", "\\", "#", "?", "~",
     "proc", "self", "root", "etc", "passwd", "evil.example.com", "127.0.0.1:5000",
     "\uff0e\uff0e", "m-0123456789abcdef0123456789abcdef", ":", "//", "\x00", " "]
)  # fmt: skip
_PREFIXES = st.sampled_from(
    ["models:/", "models://", "models:///", "MODELS:/", "file://", "file:///", "runs:/", "/",
     "//", "", "s3://", "http://", "models:\\"]
)  # fmt: skip


@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIXES, segments=st.lists(_SEGMENTS, min_size=1, max_size=6))
def test_any_uri_the_validator_accepts_is_a_plain_registry_reference(prefix, segments):
    """Property: accepted URIs are exactly the three registry forms, with nothing else in them."""
    from airflow_mlops.core.model_uri import parse_model_uri

    uri = prefix + "/".join(segments)
    try:
        parsed = parse_model_uri(uri, allowed_registry_uri="http://127.0.0.1:5000")
    except ModelUriError as err:
        assert "Refused model URI" in str(err)
        return
    canonical = parsed.uri
    assert canonical.startswith("models:/") and not canonical.startswith("models://")
    for forbidden in ("..", "\\", "%", "#", "?", "//", "\x00", "evil"):
        assert forbidden not in canonical, (uri, canonical)
    assert parsed.is_alias or parsed.is_version or parsed.is_logged_model


# -- report paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload", REPORT_PAYLOADS)
def test_safe_report_uri_refuses_the_payload(payload, tmp_path):
    from airflow_mlops.core.model_uri import safe_report_uri

    base = tmp_path / "reports"
    base.mkdir()
    with pytest.raises(ModelUriError):
        safe_report_uri(payload, str(base))


@pytest.mark.parametrize(
    "payload",
    ["s3://other-bucket/reports/x.json", "s3://bucket/reports/../x.json",
     "s3://bucket/reports/%2e%2e/x.json", "s3://bucket/reports//x.json",
     "s3://bucket/other/x.json", "s3://bucket/reports", "/local/x.json",
     "s3://bucket/reports/a\\..\\..\\x.json"],
)  # fmt: skip
def test_safe_report_uri_refuses_s3_payloads(payload):
    from airflow_mlops.core.model_uri import safe_report_uri

    with pytest.raises(ModelUriError):
        safe_report_uri(payload, "s3://bucket/reports")


@settings(
    max_examples=examples(50),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parts=st.lists(st.sampled_from(["..", ".", "a", "b.json", "", "#", "%2e%2e", "~", "link"]),
                      min_size=1, max_size=6),
       absolute=st.booleans())  # fmt: skip
def test_any_report_path_accepted_resolves_inside_the_base(parts, absolute, tmp_path):
    """Property: whatever safe_report_uri returns is inside the base, symlinks resolved."""
    from airflow_mlops.core.model_uri import safe_report_uri

    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    link = base / "link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    candidate = "/".join(parts)
    if absolute:
        candidate = str(base / candidate)
    try:
        resolved = safe_report_uri(candidate, str(base))
    except ModelUriError:
        return
    real_base = os.path.realpath(base)
    assert os.path.commonpath([real_base, os.path.realpath(resolved)]) == real_base
    assert os.path.realpath(resolved) != real_base


@pytest.mark.parametrize(
    "uri",
    ["http://evil.example.com/report.json", "https://evil.example.com/r.json",
     "ftp://evil.example.com/r.json", "gs://bucket/r.json", "hdfs://nn/r.json"],
)  # fmt: skip
def test_storage_refuses_to_write_reports_to_foreign_schemes(uri):
    from airflow_mlops.core.storage import Storage

    with pytest.raises(UnsupportedFormatError, match="Unsupported URI scheme"):
        Storage().write_text(uri, "{}")


@pytest.mark.parametrize(
    "host", ["evil.example.com", "user:pw@evil.example.com", "evil.example.com:445", "EVIL"]
)
def test_storage_refuses_a_file_uri_naming_another_host(host, tmp_path):
    from airflow_mlops.core.storage import Storage

    target = tmp_path / "report.json"
    target.with_name("data.csv").write_text("a\n1\n")
    storage = Storage()
    with pytest.raises(UnsupportedFormatError, match="names the host"):
        storage.write_text(f"file://{host}{target}", "{}")
    assert not target.exists()
    with pytest.raises(UnsupportedFormatError, match="names the host"):
        storage.read_table(f"file://{host}{target.with_name('data.csv')}")


def test_batch_prediction_and_drift_readers_refuse_a_file_uri_naming_another_host(tmp_path):
    """The chunked readers open local files themselves; they use Storage's path rule."""
    from contextlib import ExitStack

    import pandas as pd

    from airflow_mlops.core.drift_sampling import TableSource
    from airflow_mlops.core.prediction import open_chunks
    from airflow_mlops.core.storage import Storage

    data = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(data)
    remote = f"file://evil.example.com{data}"  # the same path, on another machine
    with ExitStack() as stack, pytest.raises(UnsupportedFormatError, match="names the host"):
        open_chunks(Storage(), remote, 10, stack)
    with pytest.raises(UnsupportedFormatError, match="names the host"):
        TableSource(remote, Storage())


@pytest.mark.parametrize("prefix", ["file://", "file://localhost"])
def test_storage_still_writes_local_file_uris(prefix, tmp_path):
    from airflow_mlops.core.storage import Storage

    target = tmp_path / "report.json"
    Storage().write_text(f"{prefix}{target}", "{}")
    assert target.read_text() == "{}"


def _fake_context(dag_id: str, run_id: str, task_id: str, map_index: int = -1):
    ti = SimpleNamespace(
        dag_id=dag_id, run_id=run_id, task_id=task_id, try_number=1, map_index=map_index
    )
    return {"ti": ti}


@pytest.mark.parametrize(
    "run_id",
    ["manual__2026-01-01T00:00:00+00:00", "../../../../etc", "a/../../b", "..\\..\\x",
     "%2e%2e", "x\x00y", "~root", "a#b?c"],
)  # fmt: skip
def test_default_report_uris_stay_in_their_run_folder_whatever_the_run_id(
    run_id, tmp_path, monkeypatch
):
    """Run ids come from users (trigger form, REST API): the default report path is built
    from them, and must stay inside ``<artifacts root>/<dag_id>/``."""
    from airflow_mlops.operators.base import ARTIFACTS_ENV, MlopsBaseOperator

    root = tmp_path / "artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(root))
    uri = MlopsBaseOperator.default_report_uri_for(
        _fake_context("ct__churn", run_id, "validate"), "validation_result.json"
    )
    resolved = Path(os.path.realpath(uri))
    assert resolved.is_relative_to(root / "ct__churn"), (run_id, uri)
    assert resolved.name == "validation_result.json"


@pytest.mark.parametrize("run_id", ["..", ".", "..."])
def test_a_dot_dot_run_id_cannot_move_the_default_report_out_of_its_dag_folder(
    run_id, tmp_path, monkeypatch
):
    """Possible only with [core] allow_double_dot_in_ids = True (see the next test)."""
    from airflow_mlops.operators.base import ARTIFACTS_ENV, MlopsBaseOperator

    root = tmp_path / "artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(root))
    uri = MlopsBaseOperator.default_report_uri_for(
        _fake_context("ct__churn", run_id, "validate"), "validation_result.json"
    )
    resolved = Path(os.path.realpath(uri))
    # Inside the DAG's folder, in a run folder of its own (not the DAG folder itself).
    assert resolved.parent.parent.parent == root / "ct__churn", uri


def test_airflow_itself_refuses_dot_dot_run_ids_by_default():
    """Why the case above needs a non-default setting: Airflow's own guard."""
    from airflow.models import DagRun

    with pytest.raises(ValueError, match="path traversal"):
        DagRun(dag_id="ct__churn", run_id="..", run_type="manual")
