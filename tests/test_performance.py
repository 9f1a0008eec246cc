"""Performance decay: core rules, and ModelPerformanceOperator with real MLflow and Airflow."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG, task
from test_drift_operator import (
    FEATURES,
    labelled_frame,
    make_champion,
    retrain_events,
    states,
    unique_name,
    write_parquet,
    xcom_result,
)

from airflow_mlops.core import performance
from airflow_mlops.core.errors import ConfigError, DataError, EmptyBatchError, MlopsError
from airflow_mlops.operators.performance import ModelPerformanceOperator

FAILURES: dict[str, BaseException] = {}

# -- core: the decay rule --------------------------------------------------------------------


def test_a_drop_beyond_the_tolerance_is_decay():
    check = performance.check_decay({"f1": 0.90}, {"f1": 0.80}, "f1", tolerance=0.05)
    assert check.decayed is True
    assert check.higher_is_better is True
    assert check.degradation == pytest.approx(0.10)
    assert check.reason.startswith("performance decay: f1 0.8000 vs 0.9000 at promotion")


def test_the_tolerance_boundary_is_inclusive():
    check = performance.check_decay({"f1": 0.90}, {"f1": 0.85}, "f1", tolerance=0.05)
    assert check.decayed is False and check.reason.startswith("no performance decay")


def test_improvement_is_never_decay():
    assert not performance.check_decay({"f1": 0.7}, {"f1": 0.95}, "f1", 0.0).decayed


def test_lower_is_better_metrics_decay_upwards():
    worse = performance.check_decay({"rmse": 10.0}, {"rmse": 12.0}, "rmse", tolerance=1.0)
    better = performance.check_decay({"rmse": 10.0}, {"rmse": 8.0}, "rmse", tolerance=1.0)
    assert worse.decayed and not worse.higher_is_better and worse.degradation == 2.0
    assert not better.decayed


def test_relative_tolerance_is_a_share_of_the_baseline():
    rule = {"metric": "rmse", "tolerance": 0.1, "tolerance_mode": "relative"}
    assert not performance.check_decay({"rmse": 10.0}, {"rmse": 10.9}, **rule).decayed
    assert performance.check_decay({"rmse": 10.0}, {"rmse": 11.2}, **rule).decayed
    # A zero baseline has no share: judged in metric units instead.
    zero = performance.check_decay({"mae": 0.0}, {"mae": 0.05}, "mae", 0.1, "relative")
    assert zero.tolerance_mode == "absolute" and not zero.decayed


def test_missing_metrics_fail_closed_naming_them():
    with pytest.raises(MlopsError, match=r"no recorded 'roc_auc'.*\['accuracy', 'f1'\]"):
        performance.check_decay({"f1": 0.9, "accuracy": 0.9}, {"roc_auc": 0.8}, "roc_auc", 0.1)
    with pytest.raises(DataError, match="'roc_auc' cannot be computed"):
        performance.check_decay({"roc_auc": 0.9}, {"f1": 0.8}, "roc_auc", 0.1)
    with pytest.raises(MlopsError, match="'f1'"):
        performance.check_decay({"f1": math.nan}, {"f1": 0.8}, "f1", 0.1)


def test_baseline_comes_from_the_training_runs_holdout_metrics():
    run_metrics = {"holdout_f1": 0.8, "holdout_accuracy": 0.9, "train_time_s": 3.0}
    assert performance.baseline_metrics_from_run(run_metrics) == {"f1": 0.8, "accuracy": 0.9}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tolerance": -0.1}, "tolerance"),
        ({"tolerance": math.inf}, "tolerance"),
        ({"tolerance_mode": "percent"}, "tolerance_mode"),
        ({"min_labelled_rows": 0}, "min_labelled_rows"),
        ({"metric": ""}, "metric"),
    ],
)
def test_decay_settings_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        performance.DecaySettings(**kwargs)


def test_default_metric_by_task():
    settings = performance.DecaySettings()
    assert settings.metric_for("classification") == "f1"
    assert settings.metric_for("regression") == "rmse"
    assert performance.DecaySettings(metric="roc_auc").metric_for("classification") == "roc_auc"


# -- core: scoring the labelled rows ---------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    train = labelled_frame(800, seed=11)
    return LogisticRegression(max_iter=500).fit(train[["amount", "score"]], train["label"])


def test_scoring_ignores_rows_whose_label_has_not_arrived(fitted_model):
    frame = labelled_frame(400, seed=21).astype({"label": "float"})
    frame.loc[frame.index[:150], "label"] = np.nan

    score = performance.score_labelled_batch(
        fitted_model, frame, ["amount", "score"], "label", "classification", min_rows=100
    )

    assert score.rows == 400 and score.labelled_rows == 250
    assert set(score.metrics) >= {"accuracy", "f1", "roc_auc", "log_loss"}


def test_too_few_labels_give_no_metrics(fitted_model):
    frame = labelled_frame(50, seed=21)
    score = performance.score_labelled_batch(
        fitted_model, frame, ["amount", "score"], "label", "classification", min_rows=100
    )
    assert score.metrics is None and score.labelled_rows == 50


def test_missing_target_or_features_are_named(fitted_model):
    frame = labelled_frame(200, seed=21)
    with pytest.raises(DataError, match="no target column 'churned'"):
        performance.score_labelled_batch(fitted_model, frame, None, "churned", "classification")
    with pytest.raises(DataError, match=r"lacks feature columns \['tenure'\]"):
        performance.score_labelled_batch(
            fitted_model, frame, ["amount", "tenure"], "label", "classification"
        )


# -- core: the whole check (check_champion_performance) --------------------------------------


def no_mlflow() -> Any:
    raise AssertionError("MLflow must not be reached")


def champion_facts(tags: dict[str, str], **fields: Any) -> Any:
    from airflow_mlops.core.champion import ChampionFacts

    defaults = {"version": "1", "run_id": "r1", "experiment_id": "0", "model_uri": "models:/m/1"}
    return ChampionFacts(model_name="m", tags=tags, metrics={}, **{**defaults, **fields})


def run_check(champion: Any, labels_uri: str, tmp_path: Path, **kwargs: Any) -> Any:
    from airflow_mlops.core.storage import Storage

    return performance.check_champion_performance(
        champion,
        Storage(),
        labels_uri,
        settings=performance.DecaySettings(),
        report_uri=str(tmp_path / "performance.json"),
        mlflow_artifact="monitoring/performance/x/performance.json",
        **{"mlflow_session": no_mlflow, "trust": no_mlflow, **kwargs},
    )


def test_the_check_fails_closed_before_reading_or_loading_anything(tmp_path):
    """No target/task tags: named, before the labels are read. No labelled row: before the
    model trust is asked and the model loaded. Neither writes a report."""
    with pytest.raises(ConfigError, match=r"Pass target and task.*'mlops.target'"):
        run_check(champion_facts({}), str(tmp_path / "absent.parquet"), tmp_path)
    unlabelled = labelled_frame(20, seed=5).astype({"label": "float"})
    unlabelled["label"] = np.nan
    uri = write_parquet(unlabelled, tmp_path / "unlabelled.parquet")
    tags = {"mlops.target": "label", "mlops.task": "classification"}
    with pytest.raises(EmptyBatchError, match=r"no labelled rows \(20 rows, none with 'label'\)"):
        run_check(champion_facts(tags), uri, tmp_path)
    assert not (tmp_path / "performance.json").exists()


def test_the_check_refuses_an_untrusted_champion_before_unpickling(client, tracking, tmp_path):
    """The champion's files are checked against the model trust before any unpickling."""
    from contextlib import contextmanager

    from test_provenance import register_foreign_model, write_pickled_model

    from airflow_mlops.core.champion import read_champion
    from airflow_mlops.core.errors import UntrustedModelError
    from airflow_mlops.core.provenance import ModelTrust

    marker = tmp_path / "UNPICKLED"
    name = unique_name("foreign")
    register_foreign_model(client, name, write_pickled_model(tmp_path / "m", marker))
    uri = write_parquet(labelled_frame(200, seed=6), tmp_path / "labelled.parquet")

    @contextmanager
    def session() -> Any:
        yield client

    with pytest.raises(UntrustedModelError, match=f"model {name!r} version 1"):
        run_check(
            read_champion(client, name),
            uri,
            tmp_path,
            target="label",
            task="classification",
            mlflow_session=session,
            trust=ModelTrust,  # no signing key: the provider's registration tags are required
        )
    assert not marker.exists()
    assert not (tmp_path / "performance.json").exists()


# -- the operator ----------------------------------------------------------------------------


def record_failure(context: Any) -> None:
    FAILURES[context["dag"].dag_id] = context["exception"]


def degrade(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Flip the label of ``share`` of the rows: the world changed, the model did not."""
    rng = np.random.default_rng(seed)
    flipped = frame.copy()
    mask = rng.random(len(frame)) < share
    flipped.loc[mask, "label"] = 1 - flipped.loc[mask, "label"]
    return flipped


@pytest.fixture
def scored_champion(mlflow_conn, mlflow_server) -> dict[str, Any]:
    """A champion whose recorded holdout f1 is its real f1 on fresh rows of the same world."""
    from sklearn.metrics import f1_score

    name = unique_name("decay")
    facts = make_champion(mlflow_server, name, reference_uri=None)
    holdout = labelled_frame(3_000, seed=31)
    baseline_f1 = f1_score(holdout["label"], facts["model"].predict(holdout[FEATURES]))
    # Record the promotion-time metric the way training does (holdout_<metric>).
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=mlflow_server).log_metric(facts["run_id"], "holdout_f1", baseline_f1)
    return {"name": name, "baseline_f1": baseline_f1, **facts}


def performance_dag(**operator_kwargs: Any) -> DAG:
    with DAG(unique_name("perf"), schedule=None) as dag:
        check = ModelPerformanceOperator(
            task_id="decay", on_failure_callback=record_failure, **operator_kwargs
        )

        @task
        def after() -> str:
            return "ran"

        check >> after()
    return dag


def test_degraded_labels_trigger_the_retrain_signal_with_the_reason(
    run_dag, scored_champion, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    labels = degrade(labelled_frame(1_000, seed=41), share=0.4, seed=1)
    uri = write_parquet(labels, tmp_path / "labelled.parquet")

    dag_run = run_dag(performance_dag(model_name=scored_champion["name"], labels_uri=uri))

    assert states(dag_run) == {"decay": "success", "after": "success"}
    result = xcom_result(dag_run, "decay")
    assert result["decayed"] is True
    assert result["check"]["metric"] == "f1"
    assert result["check"]["baseline"] == pytest.approx(scored_champion["baseline_f1"])
    assert result["check"]["degradation"] > 0.05
    assert result["retrain_signal"]["emit"] is True
    events = retrain_events(scored_champion["name"])
    assert len(events) == 1
    extra = events[0]["extra"]
    assert extra["trigger"] == "performance_decay" and extra["metric"] == "f1"
    assert extra["reason"].startswith("performance decay: f1 ")
    assert extra["model_name"] == scored_champion["name"]
    assert extra["champion_version"] == result["champion_version"]
    assert extra["report_uri"] == result["report_uri"]
    record = json.loads(Path(result["report_uri"]).read_text())
    assert record["labels_uri"] == uri and record["decayed"] is True
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.list_artifacts(scored_champion["run_id"], "monitoring/performance")


def test_healthy_labels_do_not_signal(run_dag, scored_champion, tmp_path):
    uri = write_parquet(labelled_frame(1_000, seed=42), tmp_path / "labelled.parquet")

    dag_run = run_dag(performance_dag(model_name=scored_champion["name"], labels_uri=uri))

    result = xcom_result(dag_run, "decay")
    assert result["decayed"] is False, result["reason"]
    assert result["retrain_signal"]["emit"] is False
    assert retrain_events(scored_champion["name"]) == []


def test_too_few_labels_give_no_verdict(run_dag, scored_champion, tmp_path):
    labels = degrade(labelled_frame(300, seed=43), share=0.5, seed=2).astype({"label": "float"})
    labels.loc[labels.index[:250], "label"] = np.nan  # 50 labelled rows
    uri = write_parquet(labels, tmp_path / "labelled.parquet")

    dag_run = run_dag(performance_dag(model_name=scored_champion["name"], labels_uri=uri))

    result = xcom_result(dag_run, "decay")
    assert result["metrics"] is None and result["labelled_rows"] == 50
    assert result["reason"] == "not enough labelled rows for a verdict: 50 < 100"
    assert retrain_events(scored_champion["name"]) == []


def test_on_decay_fail_and_explicit_baseline(run_dag, scored_champion, tmp_path):
    uri = write_parquet(labelled_frame(1_000, seed=44), tmp_path / "labelled.parquet")
    dag = performance_dag(
        model_name=scored_champion["name"],
        labels_uri=uri,
        metric="accuracy",
        baseline_metrics={"accuracy": 0.999},  # an SLA the model cannot meet
        tolerance="0.01",
        on_decay="fail",
    )

    dag_run = run_dag(dag)

    assert states(dag_run)["decay"] == "failed"
    assert "performance decay: accuracy" in str(FAILURES[dag.dag_id])
    assert xcom_result(dag_run, "decay")["decayed"] is True
    assert retrain_events(scored_champion["name"]) == []


def test_no_labelled_rows_fails_or_skips(run_dag, scored_champion, tmp_path):
    labels = labelled_frame(100, seed=45).astype({"label": "float"})
    labels["label"] = np.nan
    uri = write_parquet(labels, tmp_path / "unlabelled.parquet")

    failed = performance_dag(model_name=scored_champion["name"], labels_uri=uri)
    assert states(run_dag(failed))["decay"] == "failed"
    assert "no labelled rows" in str(FAILURES[failed.dag_id])

    skipped = run_dag(
        performance_dag(model_name=scored_champion["name"], labels_uri=uri, on_empty="skip")
    )
    assert states(skipped) == {"decay": "skipped", "after": "skipped"}


def test_no_champion_skips(run_dag, mlflow_conn, tmp_path):
    uri = write_parquet(labelled_frame(200, seed=46), tmp_path / "labelled.parquet")
    dag_run = run_dag(performance_dag(model_name=unique_name("nobody"), labels_uri=uri))
    assert states(dag_run)["decay"] == "skipped"


def test_parse_time_checks():
    with pytest.raises(ConfigError, match="on_decay"):
        ModelPerformanceOperator(task_id="p", model_name="m", labels_uri="x", on_decay="page")
    with pytest.raises(ConfigError, match="tolerance_mode"):
        ModelPerformanceOperator(task_id="p", model_name="m", labels_uri="x", tolerance_mode="pct")
    op = ModelPerformanceOperator(task_id="p", model_name="m", labels_uri="{{ params.labels }}")
    assert {"labels_uri", "metric", "tolerance", "on_decay"} <= set(op.template_fields)


def test_labels_outside_the_allowed_prefixes_are_refused_before_execute(tmp_path):
    """``labels_uri`` is a data URI: checked against the prefixes once rendered."""
    from airflow_mlops.core.errors import DataUriNotAllowedError

    allowed = tmp_path / "labels"
    op = ModelPerformanceOperator(
        task_id="p",
        model_name="m",
        labels_uri="{{ params.labels }}",
        report_folder_uri=str(tmp_path / "reports"),  # a report folder, not a data URI
        allowed_data_prefixes=[str(allowed)],
    )
    op.labels_uri = str(allowed / "batch.parquet")  # what the template rendered to
    op.pre_execute(context={})
    op.labels_uri = "/etc/passwd.csv"
    with pytest.raises(DataUriNotAllowedError, match=r"labels_uri '/etc/passwd\.csv'"):
        op.pre_execute(context={})


def test_a_rendered_on_decay_typo_fails_naming_on_decay(run_dag, tmp_path):
    """The policy is checked after rendering, and the error names this operator's field."""
    uri = write_parquet(labelled_frame(200, seed=47), tmp_path / "labelled.parquet")
    dag = performance_dag(
        model_name=unique_name("typo"), labels_uri=uri, on_decay="{{ dag_run.conf['policy'] }}"
    )
    dag_run = run_dag(dag, policy="page")
    assert states(dag_run)["decay"] == "failed"
    error = FAILURES[dag.dag_id]
    assert isinstance(error, ConfigError)
    assert str(error).startswith("on_decay must be one of")
