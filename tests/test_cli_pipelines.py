"""airflow-mlops lint / schema / sync-dags."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_mlops.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_lint_accepts_shipped_pipelines(capsys):
    files = sorted(str(p) for p in (ROOT / "include" / "pipelines").glob("*.yaml"))
    assert main(["lint", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(files)


def test_lint_names_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {train_uri: a.csv}\nvalidation: {on_failure: explode}\n")
    assert main(["lint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: INVALID" in err
    assert "data.target: Field required" in err
    assert "validation.on_failure: Input should be 'fail', 'skip' or 'warn'" in err


def test_schema_is_json_with_the_sections(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"data", "training", "evaluation", "monitoring", "segments"} <= set(schema["properties"])
    assert "data" in schema["required"]


def test_sync_dags_writes_then_reports_in_sync(tmp_path, capsys):
    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    (pipelines / "churn.yaml").write_text("name: churn\n")
    assert main(["sync-dags", "--pipelines", str(pipelines), "--dags", str(dags)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (dags / "mlops_pipeline__churn.py").read_text().count("dags_from_yaml") == 2
    assert main(["sync-dags", "--pipelines", str(pipelines), "--dags", str(dags)]) == 0
    assert "already in sync" in capsys.readouterr().out


def test_sync_dags_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["sync-dags", "--pipelines", str(tmp_path / "nope")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_sync_dags_refuses_a_hostile_file_name_and_names_it(tmp_path, capsys):
    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    hostile = 'x" if 0 else __import__("os").mkdir("PWNED") or "x.yaml'
    (pipelines / hostile).write_text("name: x\n")
    assert main(["sync-dags", "--pipelines", str(pipelines), "--dags", str(dags)]) == 1
    err = capsys.readouterr().err
    assert "pipeline file names must use only" in err and repr(hostile) in err
    assert not dags.exists()


def test_lint_refuses_jinja_outside_templated_keys(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {train_uri: a.csv, target: '{{ conn.x.password }}'}\n")
    assert main(["lint", str(bad)]) == 1
    assert "data.target: Jinja" in capsys.readouterr().err
