"""The pipeline YAML is configuration, not code (issue #14, item 5).

Jinja only where documented, estimators only from allowed modules, data URIs only under the
pipeline's allowed prefixes once trigger params are applied.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_mlops.core.errors import (
    ConfigError,
    DataUriNotAllowedError,
    EstimatorNotAllowedError,
    TemplateNotAllowedError,
)
from airflow_mlops.factories.config import load_config, parse_config
from airflow_mlops.operators.base import MlopsBaseOperator, check_data_uri

ROOT = Path(__file__).resolve().parents[1]


def minimal(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": "m", "data": {"train_uri": "/d/in/train.parquet", "target": "y"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


# -- Jinja in YAML values ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"target": "{{ conn.x.password }}"}}, r"data\.target: Jinja"),
        ({"data": {"predictions_uri": "/out/{{ conn.x.password }}.parquet"}}, r"\['conn'\]"),
        ({"data": {"predictions_uri": "/out/{{ var.value.x }}.parquet"}}, r"\['var'\]"),
        (
            {"data": {"predictions_uri": "/out/{% for x in range(3) %}{{ ds }}{% endfor %}"}},
            "statements",
        ),
        ({"data": {"predictions_uri": "/out/{{ ds.__class__ }}"}}, "expressions over"),
        ({"data": {"predictions_uri": "/out/{{ params.__class__ }}"}}, "expressions over"),
        ({"data": {"predictions_uri": "/out/{{ ds | attr('x') }}"}}, "expressions over"),
        ({"data": {"predictions_uri": "/out/{{ macros.ds_add(ds, 1) }}"}}, r"\['macros'\]"),
        ({"data": {"predictions_uri": "/out/{{ ti.xcom_pull() }}"}}, r"\['ti'\]"),
        ({"data": {"predictions_uri": "/out/{{ params['x'] }}"}}, "expressions over"),
        ({"data": {"predictions_uri": "/out/{{ ds"}}, "invalid template"),
        ({"data": {"new_data_uri": "/d/{{ ds }}/"}}, r"data\.new_data_uri: Jinja"),
        ({"training": {"estimator": "{{ var.value.model }}"}}, r"training\.estimator: Jinja"),
        ({"training": {"params": {"{{ conn.x.password }}": 1}}}, "Jinja"),
        ({"description": "{# hidden #}"}, r"description: Jinja"),
        (
            {"validation": {"suite": [{"type": "t", "kwargs": {"value": "{{ var.value.x }}"}}]}},
            r"validation\.suite\.0\.kwargs\.value: Jinja",
        ),
    ],
    ids=lambda v: str(v)[:40],
)
def test_jinja_is_refused_outside_documented_keys_and_variables(sections, message):
    with pytest.raises(TemplateNotAllowedError, match=message):
        parse_config(minimal(**sections), source="p.yaml")


@pytest.mark.parametrize(
    "uri",
    [
        "/out/{{ ds }}.parquet",
        "/out/{{ ds_nodash }}/{{ params.region }}.parquet",
        "/out/{{data_interval_start}}-{{- data_interval_end -}}.csv",
        "s3://bucket/out/{{ logical_date }}.parquet",
    ],
)
def test_documented_variables_are_accepted_in_templated_keys(uri):
    config = parse_config(minimal(data={"predictions_uri": uri}), source="p.yaml")
    assert config.data.predictions_uri == uri


def test_a_yaml_file_with_a_connection_template_names_file_and_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(minimal(data={"target": "{{ conn.x.password }}"})))
    with pytest.raises(TemplateNotAllowedError, match=rf"{path}.*data\.target"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "text", "message"),
    [
        ("data", "predictions_uri: !!binary {b64}", r"data\.predictions_uri.*\['conn'\]"),
        ("training", "estimator: !!binary {b64}", r"training\.estimator: Jinja"),
        ("training", "params: {{!!binary {b64}: 1}}", "Jinja"),
    ],
    ids=["templated-key", "other-key", "mapping-key"],
)
def test_a_template_hidden_in_a_yaml_binary_scalar_is_refused(tmp_path, section, text, message):
    """``!!binary`` loads as bytes, which pydantic decodes into the ``str`` field."""
    import base64

    b64 = base64.b64encode(b"/out/{{ conn.x.password }}").decode()
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: m\ndata:\n  train_uri: /d/in/train.parquet\n  target: y\n"
        + ("" if section == "data" else f"{section}:\n")
        + f"  {text.format(b64=b64)}\n"
    )
    with pytest.raises(TemplateNotAllowedError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('  features: !!set {"{{ var.value.x }}": null}', r"data\.features\.0: Jinja"),
        (  # training.params values are Any: the tuple would reach the operator as is
            'training:\n  params: {C: !!omap [{"{{ var.value.x }}": 1}]}',
            r"training\.params\.C\.0\.0: Jinja",
        ),
    ],
    ids=["set", "omap"],
)
def test_a_template_in_a_yaml_set_or_ordered_map_is_refused(tmp_path, line, message):
    """``!!set`` loads as a set and ``!!omap``/``!!pairs`` as tuples: pydantic accepts both
    as lists, and Airflow renders them inside template fields."""
    path = tmp_path / "p.yaml"
    path.write_text(f"name: m\ndata:\n  train_uri: /d/in/train.parquet\n  target: y\n{line}\n")
    with pytest.raises(TemplateNotAllowedError, match=message):
        load_config(path)


# -- estimators -------------------------------------------------------------------------------
@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Two importable modules: one with a factory, one that leaves a mark when imported."""
    (tmp_path / "trusted_models.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n"
        "def build():\n    return LogisticRegression(max_iter=50)\n"
        "def not_an_estimator():\n    return 'x'\n"
    )
    (tmp_path / "evil_models.py").write_text(
        f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\nclass Model:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("trusted_models", "evil_models"):
        sys.modules.pop(name, None)


def test_os_system_as_estimator_is_refused_before_anything_is_called(monkeypatch):
    from airflow_mlops.core.estimators import resolve_estimator

    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(EstimatorNotAllowedError, match=r"'os\.system' is not in an allowed"):
        resolve_estimator("os.system", "classification", {})
    assert calls == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtins.eval", "not in an allowed module"),
        ("subprocess.Popen", "not in an allowed module"),
        ("sklearn.datasets.fetch_openml", "not an estimator class"),
        ("sklearn.utils._testing.MinimalClassifier", "public names"),
        ("sklearn.base.BaseEstimator", "not an estimator"),
        ("sklearnx.Model", "not in an allowed module"),
    ],
)
def test_estimator_paths_outside_the_allow_list_are_refused(spec, message):
    from airflow_mlops.core.estimators import resolve_estimator

    with pytest.raises(EstimatorNotAllowedError, match=message):
        resolve_estimator(spec, "classification", {})


def test_a_module_outside_the_allow_list_is_never_imported(user_modules):
    from airflow_mlops.core.estimators import resolve_estimator

    with pytest.raises(EstimatorNotAllowedError, match="allowed_estimator_modules"):
        resolve_estimator("evil_models.Model", "classification", {})
    assert not (user_modules / "PWNED").exists()
    assert "evil_models" not in sys.modules


def test_factories_from_configured_modules_must_return_an_estimator(user_modules):
    from airflow_mlops.core.estimators import resolve_estimator

    estimator = resolve_estimator("trusted_models.build", "classification", {}, ["trusted_models"])
    assert type(estimator).__name__ == "LogisticRegression"
    with pytest.raises(ConfigError, match="not a scikit-learn compatible estimator"):
        resolve_estimator(
            "trusted_models.not_an_estimator", "classification", {}, ["trusted_models"]
        )
    with pytest.raises(EstimatorNotAllowedError):
        resolve_estimator("trusted_models.build", "classification", {})


def test_the_operator_reads_the_allow_list_from_airflow_settings(monkeypatch):
    from airflow_mlops.operators.training import TrainModelOperator

    monkeypatch.setenv("AIRFLOW__MLOPS__ALLOWED_ESTIMATOR_MODULES", "trusted_models, team.models.")
    op = TrainModelOperator(
        task_id="t", train_uri="/d/x.csv", target="y", experiment_name="e", estimator="x.Y"
    )
    assert tuple(op.training_config().allowed_modules) == ("trusted_models", "team.models.")


# -- data URIs under the pipeline's allowed prefixes ------------------------------------------
@pytest.mark.parametrize(
    "uri",
    [
        "/etc/",
        "/etc/passwd",
        "/data/in/../../etc/passwd",
        "/data/in-other/x.csv",
        "file://otherhost/data/in/x.csv",
        "s3://other-bucket/x.csv",
        "s3://bucket/data2/x.csv",
        "s3://bucket/data/../secrets/x.csv",
        "https://bucket.example.com/data/x.csv",
        "relative/x.csv",
    ],
)
def test_data_uris_outside_the_allowed_prefixes_are_refused(uri):
    with pytest.raises(DataUriNotAllowedError, match="train_uri"):
        check_data_uri(uri, ["/data/in", "s3://bucket/data/"], "train_uri")


@pytest.mark.parametrize(
    "uri",
    ["/data/in/x.csv", "/data/in/sub/x.parquet", "file:///data/in/x.csv", "s3://bucket/data/x.csv"],
)
def test_data_uris_under_the_allowed_prefixes_pass(uri):
    check_data_uri(uri, ["/data/in/", "s3://bucket/data"], "train_uri")


def test_a_symlink_out_of_an_allowed_folder_is_refused(tmp_path):
    allowed = tmp_path / "data"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    with pytest.raises(DataUriNotAllowedError):
        check_data_uri(str(allowed / "link" / "passwd"), [str(allowed)], "train_uri")


def test_default_prefixes_are_the_folders_of_the_yaml_uris_and_can_be_declared():
    config = load_config(ROOT / "include" / "pipelines" / "diabetes.yaml")
    assert config.allowed_data_prefixes == [str(ROOT / "include" / "data" / "diabetes")]
    shipped = load_config(ROOT / "include" / "pipelines" / "breast_cancer.yaml")
    assert shipped.allowed_data_prefixes == [
        str(ROOT / "include" / "data" / "breast_cancer"),
        str(ROOT / ".demo"),
        "s3://ml-data/breast_cancer/",
    ]
    declared = parse_config(
        minimal(data={"allowed_prefixes": ["s3://lake/raw/", "/mnt/data"]}), source="p.yaml"
    )
    assert declared.allowed_data_prefixes == ["s3://lake/raw/", "/mnt/data"]
    with pytest.raises(ConfigError, match="allowed_prefixes"):
        parse_config(minimal(data={"allowed_prefixes": ["s3://"]}), source="p.yaml")
    templated = parse_config(
        minimal(data={"predictions_uri": "s3://out/preds/{{ ds }}/p.parquet"}), source="p.yaml"
    )
    assert templated.allowed_data_prefixes == ["/d/in", "s3://out/preds"]


@pytest.mark.parametrize(
    ("data", "folder"),
    [
        ({"predictions_uri": "/out{{ ds }}.parquet"}, "'/'"),  # would allow every file
        ({"train_uri": "/train.parquet"}, "'/'"),
        ({"predictions_uri": "file:///p.parquet"}, "'file://'"),
        ({"predictions_uri": "s3://{{ params.bucket }}/p.parquet"}, "'s3://'"),
        ({"predictions_uri": "preds/{{ ds }}.parquet"}, "'preds'"),  # relative: never resolved
    ],
)
def test_a_default_prefix_must_be_a_checkable_folder(data, folder):
    raw = minimal(data=data)
    with pytest.raises(ConfigError, match=rf"gives no folder to allow by default \({folder}\)"):
        parse_config(raw, source="p.yaml", base_dir=Path("/srv/pipelines"))
    # Declaring the prefixes is the way out.
    declared = minimal(data={**data, "allowed_prefixes": ["/d/in"]})
    parse_config(declared, source="p.yaml", base_dir=Path("/srv/pipelines"))


def test_every_data_task_of_the_generated_dags_carries_the_prefixes():
    from airflow_mlops.factories import continuous_training_dag, monitoring_dag

    config = load_config(ROOT / "include" / "pipelines" / "breast_cancer.yaml")
    tasks = [*continuous_training_dag(config).tasks, *monitoring_dag(config).tasks]
    data_tasks = [t for t in tasks if getattr(t, "data_uri_fields", None)]
    assert {t.task_id for t in data_tasks} == {
        "detect_changes", "validate", "train", "predict", "drift",
    }  # fmt: skip
    for task in data_tasks:
        assert task.allowed_data_prefixes == config.allowed_data_prefixes, task.task_id
    train = next(t for t in tasks if t.task_id == "train")
    train.train_uri = "/etc/"  # what `{{ params.train_uri }}` renders to with a hostile trigger
    with pytest.raises(DataUriNotAllowedError, match="train_uri '/etc/'"):
        train.pre_execute(context={})


class ReadsData(MlopsBaseOperator):
    """The smallest operator reading a data URI: records what it was allowed to read."""

    template_fields = (*MlopsBaseOperator.template_fields, "data_uri", "report_uri")

    def __init__(self, *, data_uri: str, report_uri: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_uri, self.report_uri = data_uri, report_uri

    def execute(self, context: Any) -> str:
        return self.data_uri


def test_a_trigger_param_outside_the_prefixes_fails_the_task_in_the_task_runner(run_dag, tmp_path):
    from airflow.sdk import DAG, Param

    allowed = tmp_path / "data"
    allowed.mkdir()
    with DAG(
        f"trust_prefixes_{uuid.uuid4().hex[:6]}",
        schedule=None,
        params={"data_uri": Param(str(allowed / "x.csv"), type="string")},
    ) as dag:
        ReadsData(
            task_id="read",
            data_uri="{{ params.data_uri }}",
            report_uri="/anywhere/report.json",  # not data: never checked
            allowed_data_prefixes=[str(allowed)],
        )
    assert run_dag(dag).state == "success"
    assert run_dag(dag, data_uri="/etc/passwd").state == "failed"
    assert run_dag(dag, data_uri="s3://other-bucket/x.csv").state == "failed"


def test_segment_data_is_read_only_from_the_own_dags_artifacts_folder(monkeypatch, tmp_path):
    """The segment URIs come from an XCom (the USER role may patch it): they may name the
    files this DAG wrote, never another pipeline's holdout under the shared root."""
    from airflow.sdk import DAG

    from airflow_mlops.operators.base import DAG_ARTIFACTS_PREFIX

    monkeypatch.setenv("AIRFLOW__MLOPS__ARTIFACTS_URI", str(tmp_path))
    with DAG("ct_segments", schedule=None):
        read = ReadsData(task_id="read", data_uri="", allowed_data_prefixes=[DAG_ARTIFACTS_PREFIX])
    read.data_uri = str(tmp_path / "ct_segments" / "run" / "split" / "segments" / "a.parquet")
    read.check_data_uris()
    for other in ("other_team_ct/run/train/training/holdout.parquet", "ct_segments_x/a.parquet"):
        read.data_uri = str(tmp_path / other)
        with pytest.raises(DataUriNotAllowedError, match="data_uri"):
            read.check_data_uris()


def test_an_inline_suite_with_the_pandas_condition_parser_is_refused_at_load():
    suite = [
        {
            "type": "expect_column_values_to_not_be_null",
            "kwargs": {"column": "a", "row_condition": 'f=="x"', "condition_parser": "pandas"},
        }
    ]
    with pytest.raises(ConfigError, match=r"validation\.suite.*condition_parser 'pandas'"):
        parse_config(minimal(validation={"suite": suite}), source="p.yaml")
