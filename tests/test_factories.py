"""DAG factories: typed config, DAG shapes, and per-file import errors for broken YAML."""

from __future__ import annotations

import ast
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airflow_mlops.core.errors import ConfigError, PipelineFileNameError
from airflow_mlops.factories.config import load_config, parse_config
from airflow_mlops.factories.loader import sync_dag_files

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "include" / "pipelines"


def minimal(**overrides):
    raw = {"name": "m", "data": {"train_uri": "/d/train.parquet", "target": "y"}}
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_are_valid(path):
    config = load_config(path)
    assert Path(config.data.train_uri).is_file(), "relative data paths resolve against the YAML"
    if isinstance(config.validation.suite, str):
        assert Path(config.validation.suite).is_file()


def test_errors_name_source_and_field():
    raw = minimal(training={"holdout_fraction": 1.5, "estimatr": "x"}, data={"train_uri": "a.csv"})
    with pytest.raises(ConfigError) as err:
        parse_config(raw, source="pipelines/m.yaml")
    text = str(err.value)
    assert "pipelines/m.yaml" in text
    assert "data.target: Field required" in text
    assert "training.holdout_fraction: Input should be less than 1" in text
    assert "training.estimatr: Extra inputs are not permitted" in text


def test_bad_name_and_not_a_mapping():
    with pytest.raises(ConfigError, match="name: String should match pattern"):
        parse_config(minimal(name="has space"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["a"])


def test_invalid_yaml_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad} is not valid YAML"):
        load_config(bad)


def test_default_policy_follows_task():
    # Without training.task the task is known only once the model is built (issue #15): the
    # evaluate task applies the default of the trained task, never a guess from the name.
    assert parse_config(minimal()).promotion_policy is None
    regression = parse_config(minimal(training={"estimator": "xgboost.XGBRegressor"}))
    assert regression.promotion_policy is None
    for task, metric in (("classification", "f1"), ("regression", "rmse")):
        explicit = parse_config(minimal(training={"task": task}))
        assert list(explicit.promotion_policy.change_thresholds) == [metric]


def test_fingerprint_changes_with_config_only():
    a, b = parse_config(minimal()), parse_config(minimal())
    assert a.fingerprint() == b.fingerprint()
    c = parse_config(minimal(training={"params": {"max_depth": 3}}))
    assert c.fingerprint() != a.fingerprint()


def _asset_uris(condition) -> set[str]:
    children = getattr(condition, "objects", None)
    if children is not None:
        return set().union(*(_asset_uris(child) for child in children))
    return {condition.uri}


def test_ct_dag_shape_and_triggers():
    from airflow_mlops.factories import continuous_training_dag

    dag = continuous_training_dag(PIPELINES / "breast_cancer.yaml")
    assert dag.dag_id == "ct__breast_cancer"
    order = ["detect_changes", "validate", "train", "evaluate", "register", "promote", "predict"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert dag.get_task("summary").trigger_rule == "all_done"
    uris = _asset_uris(dag.timetable.asset_condition)
    assert "mlops://models/breast_cancer/retrain" in uris
    assert dag.params["train_uri"].endswith("include/data/breast_cancer/reference.parquet")


def test_manual_approval_adds_an_approval_step():
    from airflow_mlops.factories import continuous_training_dag

    dag = continuous_training_dag(PIPELINES / "breast_cancer_reviewed.yaml")
    assert "approve_promotion" in dag.get_task("register").downstream_task_ids
    assert "promote" in dag.get_task("approval_gate").downstream_task_ids


def test_segments_build_a_mapped_group():
    from airflow_mlops.factories import continuous_training_dag

    dag = continuous_training_dag(PIPELINES / "diabetes_by_sex.yaml")
    assert "split_segments" in dag.task_ids
    assert {"segment.train", "segment.promote", "segment.summary"} <= set(dag.task_ids)


def test_factories_import_graph_has_no_cycle():
    """continuous_training and segments share the chain through factories/chain.py, so neither
    imports the other (they did, lazily, in both directions)."""
    from test_imports import import_cycles, import_graph

    package = "airflow_mlops.factories"
    graph = {
        module: {t for t in targets if t.startswith(package)}
        for module, targets in import_graph().items()
        if module.startswith(package)
    }
    assert f"{package}.chain" in graph[f"{package}.segments"]
    assert f"{package}.continuous_training" not in graph[f"{package}.segments"]
    assert import_cycles(graph) == []


def test_monitoring_dag_only_when_there_is_data_to_monitor(tmp_path):
    from airflow_mlops.factories import dags_from_yaml

    namespace: dict = {}
    dags_from_yaml(
        str(ROOT / "dags" / "x.py"), "../include/pipelines/breast_cancer.yaml", namespace
    )
    assert set(namespace) == {
        "ct__breast_cancer",
        "monitor__breast_cancer",
        "rollback__breast_cancer",
        "freeze__breast_cancer",
    }
    namespace = {}
    dags_from_yaml(
        str(ROOT / "dags" / "x.py"), "../include/pipelines/diabetes_by_sex.yaml", namespace
    )
    assert set(namespace) == {
        "ct__diabetes_by_sex",
        "rollback__diabetes_by_sex",
        "freeze__diabetes_by_sex",
    }
    # Segmented: the forms choose a segment among the YAML's values, pinned in the DAG file.
    assert namespace["freeze__diabetes_by_sex"].params.get_param("segment").schema["enum"]


def test_sync_dag_files_writes_and_prunes(tmp_path):
    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    (pipelines / "a.yaml").write_text("name: a\n")
    assert sync_dag_files(pipelines, dags) == {"written": ["mlops_pipeline__a.py"], "removed": []}
    assert sync_dag_files(pipelines, dags) == {"written": [], "removed": []}
    (pipelines / "a.yaml").unlink()
    assert sync_dag_files(pipelines, dags) == {"written": [], "removed": ["mlops_pipeline__a.py"]}


def test_shipped_dag_files_are_in_sync(tmp_path):
    """dags/ holds exactly the generated files for include/pipelines/*.yaml."""
    copy = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", copy)
    result = sync_dag_files(PIPELINES, ROOT / "dags")
    assert result == {"written": [], "removed": []}, "run: airflow-mlops sync-dags"


def _import_errors_via_cli(dags_folder: Path) -> list[dict]:
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder)}
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "airflow"),
            "dags",
            "list-import-errors",
            "--local",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    # Airflow also logs to stdout; the JSON table is the line that parses as a list. The
    # command exits 1 when it lists errors, 0 when there are none.
    for line in result.stdout.splitlines():
        if line.startswith("["):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    return []


@pytest.mark.slow
def test_import_errors_isolated_per_broken_yaml(tmp_path):
    """Shipped templates have no import errors; one broken YAML gives exactly one, naming it."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "include", project / "include")
    shutil.copytree(ROOT / "dags", project / "dags")
    assert _import_errors_via_cli(project / "dags") == []

    broken = yaml.safe_load((PIPELINES / "diabetes.yaml").read_text())
    broken["name"] = "broken"
    broken["training"]["holdout_fraction"] = 3
    (project / "include" / "pipelines" / "broken.yaml").write_text(yaml.safe_dump(broken))
    sync_dag_files(project / "include" / "pipelines", project / "dags")
    errors = _import_errors_via_cli(project / "dags")
    assert len(errors) == 1, errors
    (error,) = errors
    assert error["filepath"].endswith("mlops_pipeline__broken.py")
    assert "broken.yaml" in error["error"] and "training.holdout_fraction" in error["error"]


# -- generated DAG files: names are data, never code (issue #14, item 4) ----------------------
HOSTILE_NAMES = [
    'x" if 0 else __import__("os").mkdir("PWNED") or "x.yaml',
    "x' if 0 else __import__('os').mkdir('PWNED') or 'x.yaml",
    'x"""\n__import__("os").mkdir("PWNED")\n""".yaml',
    "back\\slash.yaml",
    "brace{__import__('os').mkdir('PWNED')}.yaml",
    "unicodé.yaml",
    "new\nline.yaml",
    "space name.yaml",
]


def _string_constants_only(source: str) -> list[str]:
    """The call's arguments must be literals: a name, a string and a call of globals()."""
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    names = sorted(n.func.id for n in calls if isinstance(n.func, ast.Name))
    assert names == ["dags_from_yaml", "globals"], names
    (call,) = [c for c in calls if c.func.id == "dags_from_yaml"]
    assert isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)
    return [call.args[1].value]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_sync_refuses_hostile_pipeline_file_names(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    (pipelines / "ok.yaml").write_text("name: ok\n")
    (pipelines / name).write_text("name: x\n")
    with pytest.raises(PipelineFileNameError) as err:
        sync_dag_files(pipelines, dags)
    assert repr(name) in str(err.value)
    assert not dags.exists(), "nothing is written when one name is refused"
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize(
    "folder",
    ['pipe"lines', "pipe'lines", 'p"""q', "back\\slash", "br{ace}", "unicodé", "new\nline"],
)
def test_generated_files_hold_the_path_as_a_literal(tmp_path, monkeypatch, folder):
    """Folder names are not restricted, so the path must be written as a Python literal."""
    monkeypatch.chdir(tmp_path)
    pipelines, dags = tmp_path / folder / "pipelines", tmp_path / "dags"
    pipelines.mkdir(parents=True)
    (pipelines / "__import__.yaml").write_text("name: x\n")
    sync_dag_files(pipelines, dags)
    (generated,) = dags.glob("*.py")
    (literal,) = _string_constants_only(generated.read_text())
    assert (dags / literal).resolve() == (pipelines / "__import__.yaml").resolve()
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize("pair", [("a-b.yaml", "a_b.yaml"), ("a.yaml", "a.yml")])
def test_sync_refuses_two_yamls_for_one_generated_file(tmp_path, pair):
    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    for name in pair:
        (pipelines / name).write_text("name: a\n")
    with pytest.raises(PipelineFileNameError, match="share one generated DAG file") as err:
        sync_dag_files(pipelines, dags)
    assert all(name in str(err.value) for name in pair)
    assert not dags.exists()


def test_unquoted_yaml_on_key_and_decay_on_empty_reach_the_dags(tmp_path):
    """YAML 1.1 reads ``on:`` as ``True``; it still sets ``evaluation.on``. A delayed-labels
    pipeline can skip, not fail, its decay task before the first labels land."""
    import yaml

    from airflow_mlops.factories.config import PipelineConfig

    text = """
name: onkey
data: {train_uri: /data/train.parquet, target: y}
evaluation: {on: newest, min_rows: 10}
monitoring:
  current_uri: /data/current.parquet
  decay: {labels_uri: /data/labels.parquet, on_empty: skip}
"""
    from airflow_mlops.factories.monitoring import monitoring_dag

    config = PipelineConfig.model_validate(yaml.safe_load(text))
    assert config.evaluation.on == "newest"
    assert config.monitoring.decay.on_empty == "skip"
    assert monitoring_dag(config).get_task("decay").on_empty == "skip"


def test_fairness_and_explain_sections_reach_the_evaluate_task():
    """A fairness gate written in the YAML must gate: the evaluate task gets it as written."""
    from airflow_mlops.factories import continuous_training_dag

    fairness = {"sensitive": ["sex"], "metrics": {"recall": {"max": 0.1}}}
    config = parse_config(
        minimal(evaluation={"fairness": fairness, "explain": {"max_rows": 500, "seed": 7}})
    )
    evaluate = continuous_training_dag(config).get_task("evaluate")
    assert evaluate.fairness == config.evaluation.fairness.model_dump(mode="json")
    assert evaluate.fairness["metrics"]["recall"]["max"] == 0.1
    assert evaluate.explain["max_rows"] == 500 and evaluate.explain["seed"] == 7
    plain = continuous_training_dag(parse_config(minimal())).get_task("evaluate")
    assert plain.fairness is None


def test_a_sensitive_column_excluded_from_features_stays_in_the_holdout():
    from airflow_mlops.factories import continuous_training_dag

    fairness = {
        "sensitive": {"sex": {"exclude_from_features": True}, "band": {}},
        "metrics": {"recall": {"max": 0.1}},
    }
    config = parse_config(minimal(evaluation={"fairness": fairness}))
    train = continuous_training_dag(config).get_task("train")
    assert "sex" in train.exclude and "band" not in train.exclude
    assert train.holdout_columns == ["sex"]
