"""The fairness gate on the real MLflow server: a planted unfair challenger is refused.

Pets: class ``cat`` when ``f < 0.4``, else ``dog`` when ``k < 0.5``, else ``bird``; the
sensitive column ``group`` is ``A`` when ``g < 0.5``. The champion (v1) sees ``f`` only:
every cat right, dogs and birds confused. The challenger sees ``f``, ``g`` and ``k`` but was
trained with the cats of group A with ``f < 0.24`` (30 % of all cats) labelled ``dog``:
better overall (about 0.88 accuracy against 0.7), yet its recall of ``cat`` drops by 0.3,
and since the misread cats all sit in group A its equalized-odds difference grows.

The runs are built by hand with the contract's records (model, ``mlops/manifest.json``,
holdout with ``__mlops_file``) as in ``tests/test_honest_comparison.py``: the champion
trained on day 1, the challenger on day 2, and the compared rows are day 3's, which
neither model read.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.errors import ConfigError, DataError

TARGET = "pet"
FEATURES = ["f", "g", "k"]
POLICY = {"change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}}}
RECALL_GATE = {"sensitive": ["group"], "metrics": {"recall": {"max": 0.10}}}


def _pets(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f, g, k = rng.random(rows), rng.random(rows), rng.random(rows)
    pet = np.where(f < 0.4, "cat", np.where(k < 0.5, "dog", "bird"))
    group = np.where(g < 0.5, "A", "B")
    group[:5] = "C"  # a group too small to judge
    return pd.DataFrame({"f": f, "g": g, "k": k, "group": group, TARGET: pet})


def _log_run(
    client: Any,
    experiment: str,
    model: Any,
    features: list[str],
    manifest_files: list[Any],
    holdout: pd.DataFrame,
    name: str,
    root: Path,
) -> str:
    """A training run as the contract records it (model, manifest, holdout, lineage tags)."""
    import fsspec
    import mlflow
    from mlflow.models import infer_signature

    from airflow_mlops.core import lineage
    from airflow_mlops.core.manifest import build_manifest
    from airflow_mlops.core.storage import Storage

    run_id = client.create_run(experiment).info.run_id
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        run_id=run_id,
        signature=infer_signature(holdout[features], model.predict(holdout[features])),
        pip_requirements=["scikit-learn", "mlflow"],
        serialization_format="cloudpickle",
    )
    holdout_uri = str(root / f"holdout-{run_id}.parquet")
    sha = Storage().write_table(holdout, holdout_uri)
    manifest = build_manifest(fsspec.filesystem("file"), manifest_files)
    client.log_text(run_id, manifest.to_json(), lineage.MANIFEST_ARTIFACT_PATH)
    tags = {
        lineage.TAG_MODEL_URI: info.model_uri,
        lineage.TAG_HOLDOUT_URI: holdout_uri,
        lineage.TAG_HOLDOUT_SHA256: sha,
        lineage.TAG_TARGET: TARGET,
        lineage.TAG_TASK: "classification",
        lineage.TAG_FEATURES: json.dumps(features),
        lineage.TAG_MODEL_NAME: name,
        lineage.TAG_DATA_URI: str(root / "data"),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def pets(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Champion v1 (fair, weaker) and the planted unfair challenger, on three daily files."""
    import fsspec
    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.tree import DecisionTreeClassifier

    from airflow_mlops.core.datasets import resolve_files
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    root = tmp_path_factory.mktemp("pets")
    days = {"2026-11-01": 800, "2026-11-02": 800, "2026-11-03": 900}
    for i, (day, rows) in enumerate(days.items()):
        (root / "data" / f"dt={day}").mkdir(parents=True)
        _pets(rows, seed=i).to_parquet(root / "data" / f"dt={day}" / "part-0.parquet")
    files = {
        f.partition["dt"]: f for f in resolve_files(fsspec.filesystem("file"), str(root / "data"))
    }
    frames = {day: pd.read_parquet(files[day].path) for day in days}

    champion = DecisionTreeClassifier(max_depth=2, random_state=0)
    champion.fit(frames["2026-11-01"][["f"]], frames["2026-11-01"][TARGET])
    planted = frames["2026-11-02"].copy()
    misread = (planted["f"] < 0.24) & (planted["g"] < 0.5)
    planted.loc[misread, TARGET] = "dog"  # 30 % of the cats, all in group A, taught as dogs
    challenger = DecisionTreeClassifier(max_depth=4, random_state=0)
    challenger.fit(planted[FEATURES], planted[TARGET])

    holdout = frames["2026-11-03"].copy()
    holdout[SOURCE_FILE_COLUMN] = files["2026-11-03"].path
    name = f"pets-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    v1_holdout = frames["2026-11-01"].assign(**{SOURCE_FILE_COLUMN: files["2026-11-01"].path})
    v1_run = _log_run(
        client, experiment, champion, ["f"], [files["2026-11-01"]], v1_holdout, name, root
    )
    v2_run = _log_run(
        client,
        experiment,
        challenger,
        FEATURES,
        [files["2026-11-02"], files["2026-11-03"]],
        holdout,
        name,
        root,
    )
    v1_uri = client.get_run(v1_run).data.tags["mlops.model_uri"]
    v1 = register_version(
        client, name, v1_uri, context=RunContext(task_id="register"), run_id=v1_run
    )
    client.set_registered_model_alias(name, "champion", v1.version)
    return {
        "name": name,
        "v2_run": v2_run,
        "holdout": holdout,
        "champion_pred": champion.predict(holdout[["f"]]),
        "challenger_pred": challenger.predict(holdout[FEATURES]),
    }


def _evaluate(client: Any, pets: dict[str, Any], **options: Any) -> Any:
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.storage import Storage

    challenger = challenger_from_training(client, {"run_id": pets["v2_run"]})
    return evaluate_challenger(
        client,
        Storage(),
        challenger,
        model_name=pets["name"],
        policy=POLICY,
        trust=ModelTrust(trust_unsigned=True),  # hand-built runs are not signed
        **options,
    )


def _failed(record: dict[str, Any]) -> list[str]:
    return [r["detail"] for r in record["rules"] if r["verdict"] == "fail"]


def test_the_planted_unfair_challenger_is_better_overall_but_refused(client, pets, capsys):
    from sklearn.metrics import recall_score

    holdout, c_pred, b_pred = pets["holdout"], pets["challenger_pred"], pets["champion_pred"]
    y = holdout[TARGET].to_numpy()
    cat_drop = recall_score(y == "cat", b_pred == "cat") - recall_score(y == "cat", c_pred == "cat")
    assert 0.25 < cat_drop < 0.35  # the plant: about 0.3
    assert (c_pred == y).mean() > (b_pred == y).mean() + 0.1  # and better overall

    without_gate = _evaluate(client, pets).record
    assert without_gate["promote"] is True  # the policy alone would promote it

    gate = {**RECALL_GATE, "small_groups": "report"}
    evaluation = _evaluate(client, pets, fairness=gate)
    record = evaluation.record
    assert record["promote"] is False
    verdict = next(d for d in _failed(record) if d.startswith("recall of class 'cat'"))
    assert verdict.startswith(f"recall of class 'cat' dropped by {cat_drop:.2f} (> 0.10)")
    assert verdict in record["reason"]
    assert record["fairness"]["failed"] == [verdict]
    assert record["rows_compared"] == len(holdout) and record["rows_excluded"] == 0
    table = evaluation.artifacts["mlops/fairness.json"]
    assert table["metrics"]["recall"]["classes"]["cat"]["champion"]["value"] == pytest.approx(
        recall_score(y == "cat", b_pred == "cat")
    )
    with capsys.disabled():
        print(f"\nplanted-unfairness verdict: {verdict}\nreason: {record['reason']}")


def test_demographic_parity_and_equalized_odds_are_fairlearns_and_gated(client, pets, capsys):
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    from airflow_mlops.core.evaluation import log_artifacts

    holdout, c_pred, b_pred = pets["holdout"], pets["challenger_pred"], pets["champion_pred"]
    y, groups = holdout[TARGET].to_numpy(), holdout["group"].to_numpy()
    judged = groups != "C"  # under min_rows: reported, left out of the disparity

    def worst(metric: Any, pred: np.ndarray) -> float:  # one class against the rest
        return max(
            metric(y[judged] == c, pred[judged] == c, sensitive_features=groups[judged])
            for c in ("bird", "cat", "dog")
        )

    eo = {"challenger": worst(equalized_odds_difference, c_pred)}
    eo["champion"] = worst(equalized_odds_difference, b_pred)
    dp = worst(demographic_parity_difference, c_pred)
    assert eo["challenger"] > eo["champion"] + 0.2  # the misread cats are all in group A
    gate = {
        "sensitive": {"group": {"exclude_from_features": True}},
        "metrics": {
            "equalized_odds_difference": {"max_increase": 0.05},
            "demographic_parity_difference": {"max": 0.99},
        },
        "small_groups": "report",
    }
    evaluation = _evaluate(client, pets, fairness=gate)
    record = evaluation.record
    measured = evaluation.artifacts["mlops/fairness.json"]["metrics"]
    entry = measured["equalized_odds_difference"]["group"]
    assert entry["challenger"]["value"] == pytest.approx(eo["challenger"])
    assert entry["champion"]["value"] == pytest.approx(eo["champion"])
    assert measured["demographic_parity_difference"]["group"]["challenger"]["value"] == (
        pytest.approx(dp)
    )
    assert entry["groups"]["C"] == 5 and entry["small_groups"] == {"C": 5}
    assert record["promote"] is False
    (failed,) = _failed(record)
    assert failed.startswith("equalized_odds_difference over 'group' grew by")
    assert "(> 0.050)" in failed
    assert "demographic_parity_difference over 'group' is" in " ".join(
        r["detail"] for r in record["rules"] if r["verdict"] == "pass"
    )
    # The small group is named in the reason, never passed silently.
    assert "group group='C': not enough rows (5)" in record["reason"]

    # The table goes to the challenger's run; the XCom-sized record carries its URI.
    import mlflow

    logged = log_artifacts(client, pets["v2_run"], evaluation)
    uri = logged["fairness"]["artifact_uri"]
    assert uri.endswith("mlops/fairness.json")
    stored = mlflow.artifacts.load_dict(uri)
    assert stored["metrics"]["equalized_odds_difference"]["group"]["challenger"]["value"] == (
        pytest.approx(eo["challenger"])
    )
    assert len(json.dumps(logged["fairness"])) < 2000
    with capsys.disabled():
        print(f"\nequalized-odds verdict: {failed}")


def test_a_too_small_group_fails_the_gate_as_not_enough_rows(client, pets):
    gate = {"sensitive": ["group"], "metrics": {"demographic_parity_difference": {"max": 0.99}}}
    record = _evaluate(client, pets, fairness=gate).record
    assert record["promote"] is False
    assert _failed(record) == [
        "demographic_parity_difference of group group='C': not enough rows (5) < "
        "fairness.min_rows 30"
    ]


def test_a_missing_sensitive_column_or_a_sensitive_feature_is_a_named_error(client, pets):
    with pytest.raises(DataError, match=r"sensitive column\(s\) \['sex'\] are not in"):
        _evaluate(client, pets, fairness={"sensitive": ["sex"], **_only_recall()})
    gate = {"sensitive": {"g": {"exclude_from_features": True}}, **_only_recall()}
    with pytest.raises(DataError, match=r"\['g'\] have exclude_from_features: true but"):
        _evaluate(client, pets, fairness=gate)


def _only_recall() -> dict[str, Any]:
    return {"metrics": {"recall": {"max": 0.1}}}


def test_fairness_config_is_checked_when_the_dag_is_parsed():
    from airflow_mlops.factories.config import EvaluationConfig
    from airflow_mlops.operators.evaluation import EvaluateModelOperator

    config = EvaluationConfig.model_validate(
        {"fairness": {"sensitive": {"sex": {"exclude_from_features": True}}, **_only_recall()}}
    )
    assert config.fairness is not None and config.fairness.excluded_features == ["sex"]
    with pytest.raises(ValueError, match="list the sensitive columns"):
        EvaluationConfig.model_validate(
            {"fairness": {"metrics": {"equalized_odds_difference": {"max": 0.1}}}}
        )
    from airflow.sdk import DAG

    from airflow_mlops.factories.promotion import promotion_tasks

    with DAG("fairness_wiring", schedule=None):
        tasks = promotion_tasks(
            training_result={"run_id": "x"},
            policy=None,
            fairness=config.fairness.model_dump(mode="json"),
            explain={"max_rows": 500},
        )
    assert tasks.evaluate.fairness["sensitive"] == [
        {"column": "sex", "exclude_from_features": True}
    ]
    assert tasks.evaluate.explain["max_rows"] == 500
    with pytest.raises(ConfigError, match="give at least one of 'max' or 'max_increase'"):
        EvaluateModelOperator(
            task_id="evaluate",
            training_result={"run_id": "x"},
            fairness={"sensitive": ["sex"], "metrics": {"recall": {}}},
        )


def test_the_evaluate_task_puts_the_verdicts_in_its_xcom_and_the_tables_on_the_run(
    client, pets, mlflow_conn, run_dag
):
    """The operator under the real task runner (``dag.test()``): XCom, artifacts, record."""
    import mlflow
    from airflow.sdk import DAG
    from conftest import stored_xcom

    from airflow_mlops.operators.evaluation import EvaluateModelOperator

    with DAG(f"fair_{uuid.uuid4().hex[:6]}", schedule=None) as dag:
        EvaluateModelOperator(
            task_id="evaluate",
            training_result={"run_id": pets["v2_run"]},
            model_name=pets["name"],
            policy=POLICY,
            fairness={**RECALL_GATE, "small_groups": "report"},
            explain={"max_rows": 300},
            trust_unsigned_models=True,
            aws_conn_id=None,
            retries=0,
        )
    dag_run = run_dag(dag)
    assert dag_run.state == "success"
    xcom = stored_xcom(dag_run, "evaluate")
    assert xcom["promote"] is False
    assert xcom["fairness"]["failed"][0].startswith("recall of class 'cat' dropped by 0.3")
    assert xcom["explanations"]["top_features"][0]["feature"] == "f"  # f decides cat or not
    assert len(json.dumps(xcom)) < 20_000  # the per-group tables stay out of XCom
    decision = mlflow.artifacts.load_dict(xcom["decision_artifact_uri"])
    assert decision["fairness"] == xcom["fairness"]
    assert any(r["rule"] == "fairness.max" and r["verdict"] == "fail" for r in decision["rules"])
    for key in ("fairness", "explanations"):
        assert mlflow.artifacts.load_dict(xcom[key]["artifact_uri"])  # logged on the run
    run = client.get_run(pets["v2_run"])
    assert "recall of class 'cat' dropped" in run.data.tags["mlops.decision.reason"]


def test_a_binary_target_compares_the_positive_class_and_names_both_groups():
    """Pure functions (no server): the rule text and fairlearn's value on a binary target."""
    from fairlearn.metrics import demographic_parity_difference

    from airflow_mlops.core.fairness import FairnessSpec, fairness_rules, measure_fairness

    rng = np.random.default_rng(0)
    sex = np.repeat(["F", "M"], 100)
    y = rng.integers(0, 2, size=200)
    pred = np.where(sex == "M", rng.random(200) < 0.7, rng.random(200) < 0.3).astype(int)
    spec = FairnessSpec.model_validate(
        {"sensitive": ["sex"], "metrics": {"demographic_parity_difference": {"max": 0.1}}}
    )
    report = measure_fairness(spec, pd.DataFrame({"sex": sex}), y, pred, None)
    (rule,) = fairness_rules(report, spec)
    expected = demographic_parity_difference(y, pred, sensitive_features=sex)
    assert rule.verdict == "fail" and rule.observed == pytest.approx(expected)
    assert rule.detail.startswith(f"demographic_parity_difference over 'sex' is {expected:.3f}")
    assert "selection_rate of group 'M'" in rule.detail and "vs 'F'" in rule.detail
