"""airflow_mlops.preload: cheap to import, imports what it lists, fails closed and names why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_mlops import preload
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.preload import (
    PreloadError,
    celery_extra_config,
    forkserver_preload_option,
    modules_for,
    preload_in_scheduler,
    preload_task_libraries,
)

HEAVY = ("pandas", "numpy", "mlflow", "great_expectations", "evidently", "sklearn", "scipy")


def _run(code: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def fake_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path with small modules, and FAMILIES pointing at them."""
    (tmp_path / "preload_fake_ok.py").write_text("VALUE = 1\n")
    (tmp_path / "preload_fake_ok2.py").write_text("VALUE = 2\n")
    (tmp_path / "preload_fake_broken.py").write_text("raise RuntimeError('broken at import')\n")
    (tmp_path / "preload_fake_thread.py").write_text(
        "import threading\n"
        "STOP = threading.Event()\n"
        "THREAD = threading.Thread(target=STOP.wait, name='fake-poller', daemon=True)\n"
        "THREAD.start()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        preload,
        "FAMILIES",
        {
            "ok": ("preload_fake_ok", "preload_fake_ok2"),
            "also_ok": ("preload_fake_ok2",),
            "missing": ("preload_fake_ok", "preload_fake_no_such_module"),
            "broken": ("preload_fake_broken",),
            "thread": ("preload_fake_thread",),
            "needs_airflow": ("preload_fake_ok", "airflow.providers.fake"),
        },
    )
    monkeypatch.setattr(preload, "DEFAULT_FAMILIES", ("ok",))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("preload_fake_"):
            stop = getattr(sys.modules[name], "STOP", None)
            if stop is not None:
                stop.set()
            del sys.modules[name]


def test_importing_preload_loads_no_heavy_library():
    loaded = _run(
        f"""
        import json, sys
        import airflow_mlops.preload
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """
    )
    assert loaded == []


def test_preload_imports_every_listed_module_once_in_order(fake_modules: Path):
    report = preload_task_libraries(["ok", "also_ok"])
    assert report.families == ("ok", "also_ok")
    assert report.modules == ("preload_fake_ok", "preload_fake_ok2")
    assert report.newly_imported == report.modules
    assert "preload_fake_ok" in sys.modules and "preload_fake_ok2" in sys.modules
    assert set(report.seconds_per_module) == set(report.modules)
    # A second preload finds everything imported already.
    assert preload_task_libraries("ok").newly_imported == ()


def test_missing_module_fails_closed_naming_module_and_family(fake_modules: Path):
    with pytest.raises(PreloadError, match="preload_fake_no_such_module") as err:
        preload_task_libraries("missing")
    assert "'missing'" in str(err.value)
    assert isinstance(err.value.__cause__, ImportError)


def test_module_failing_at_import_fails_closed(fake_modules: Path):
    with pytest.raises(PreloadError, match=r"preload_fake_broken.*RuntimeError: broken at import"):
        preload_task_libraries("broken")


def test_a_thread_started_by_an_import_is_refused_unless_allowed(fake_modules: Path):
    with pytest.raises(PreloadError, match="fake-poller"):
        preload_task_libraries("thread")
    sys.modules.pop("preload_fake_thread").STOP.set()
    report = preload_task_libraries("thread", allow_threads=True)
    assert report.modules == ("preload_fake_thread",)


def test_unknown_or_empty_family_is_a_config_error(fake_modules: Path):
    with pytest.raises(ConfigError, match="unknown \\['nope'\\]"):
        preload_task_libraries("ok,nope")
    with pytest.raises(ConfigError, match="families is empty"):
        modules_for(" , ")


def test_real_families_list_the_operators_libraries():
    assert modules_for("drift")[-1] == "airflow_mlops.core.drift"
    assert "evidently" in modules_for("drift")
    assert "great_expectations" in modules_for("validation")
    assert {"sklearn", "mlflow", "airflow_mlops.core.training"} <= set(modules_for("training"))
    default = modules_for()
    assert len(default) == len(set(default))
    assert "xgboost" not in default and "boto3" not in default  # opt-in families
    assert "xgboost" in modules_for("all,xgboost")
    # Every family can be preloaded from airflow_local_settings.py (no Airflow module).
    assert not [m for m in modules_for(",".join(preload.FAMILIES)) if m.startswith("airflow.")]


def test_scheduler_guard_preloads_only_in_airflow_scheduler(fake_modules: Path):
    for argv in (["airflow", "api-server"], ["airflow", "dag-processor"], ["airflow"], ["x"]):
        assert preload_in_scheduler("ok", argv=argv) is None
    assert "preload_fake_ok" not in sys.modules
    report = preload_in_scheduler("ok", argv=["/venv/bin/airflow", "scheduler", "--pid", "p"])
    assert report is not None and "preload_fake_ok" in sys.modules


def test_scheduler_guard_refuses_airflow_modules(fake_modules: Path):
    with pytest.raises(ConfigError, match=r"Airflow modules \['airflow.providers.fake'\]"):
        preload_in_scheduler("ok,needs_airflow", argv=["airflow", "scheduler"])
    assert "preload_fake_ok" not in sys.modules  # refused before importing anything


def test_forkserver_and_celery_settings_carry_the_module_list():
    modules = modules_for("registry")
    option = forkserver_preload_option("registry").split(",")
    assert option[:2] == ["airflow", "airflow.executors.local_executor"]
    assert option[2:] == modules
    assert celery_extra_config("registry") == {"imports": modules}
    json.dumps(celery_extra_config())  # [celery] extra_celery_config is JSON


def test_local_settings_preload_runs_inside_import_airflow_for_the_scheduler(tmp_path: Path):
    """The documented airflow_local_settings.py works: `import airflow` in a process whose
    argv is `airflow scheduler` ends with the family's libraries imported, no thread started."""
    config = tmp_path / "home" / "config"
    config.mkdir(parents=True)
    (config / "airflow_local_settings.py").write_text(
        "from airflow_mlops.preload import preload_in_scheduler\n"
        "__all__: list[str] = []\n"
        "REPORT = preload_in_scheduler('registry')\n"
    )
    loaded = _run(
        """
        import json, sys, threading
        sys.argv = ["airflow", "scheduler"]
        import airflow  # imports airflow_local_settings from $AIRFLOW_HOME/config
        import airflow_local_settings
        print(json.dumps({
            "report": airflow_local_settings.REPORT.to_dict(),
            "mlflow": "mlflow" in sys.modules,
            "registry": "airflow_mlops.core.registry" in sys.modules,
            "threads": [t.name for t in threading.enumerate()],
        }))
        """,
        env={"AIRFLOW_HOME": str(tmp_path / "home")},
    )
    assert loaded["mlflow"] and loaded["registry"]
    assert loaded["report"]["modules"] == modules_for("registry")
    assert loaded["threads"] == ["MainThread"]


def _local_stack():
    import local_stack  # deploy/ is on pytest's pythonpath

    return local_stack


def _stack_state(local_stack, shape: str, root: Path, preload: bool):
    return local_stack.State(
        shape=shape,
        root=str(root),
        dags_folder=str(root / "dags"),
        ports={},
        admin_password="x",
        fernet_key="x",
        jwt_secret="x",
        preload=preload,
    )


def test_local_stack_quick_preload_writes_and_removes_its_local_settings(tmp_path: Path):
    local_stack = _local_stack()
    path = local_stack.write_preload_settings(_stack_state(local_stack, "quick", tmp_path, True))
    assert path == tmp_path / "airflow" / "config" / "airflow_local_settings.py"
    text = path.read_text()
    assert "preload_in_scheduler('all,xgboost,s3')" in text
    compile(text, str(path), "exec")
    # A start without --preload removes the file it wrote, and never a file of someone else.
    local_stack.write_preload_settings(_stack_state(local_stack, "quick", tmp_path, False))
    assert not path.exists()
    path.write_text("# my own settings\n")
    local_stack.write_preload_settings(_stack_state(local_stack, "quick", tmp_path, False))
    assert path.read_text() == "# my own settings\n"


def test_local_stack_prod_preload_configures_celery_imports(tmp_path: Path):
    local_stack = _local_stack()
    assert local_stack.celery_preload_env(_stack_state(local_stack, "prod", tmp_path, False)) == {}
    env = local_stack.celery_preload_env(_stack_state(local_stack, "prod", tmp_path, True))
    config = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])
    assert config == {"imports": modules_for("all,xgboost,s3")}


def test_celery_worker_imports_the_preload_before_forking_its_pool(fake_modules: Path):
    """The documented Celery route: ``[celery] extra_celery_config`` = celery_extra_config()
    reaches the Airflow Celery app, and the worker's start (``loader.init_worker()``, called by
    ``WorkController.__init__`` before the pool forks) imports the modules."""
    config = celery_extra_config("ok")
    loaded = _run(
        """
        import json, sys
        from airflow.providers.celery.executors.celery_executor_utils import app

        before = "preload_fake_ok" in sys.modules
        app.loader.init_worker()
        print(json.dumps({"imports": list(app.conf.imports), "before": before,
                          "after": "preload_fake_ok" in sys.modules}))
        """,
        env={
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps(config),
            "PYTHONPATH": os.pathsep.join([str(fake_modules), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert loaded == {
        "imports": ["preload_fake_ok", "preload_fake_ok2"],
        "before": False,
        "after": True,
    }
