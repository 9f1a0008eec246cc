"""The serving checker: one clean ``python -I`` process per Python process, one fork per check.

Runs against the real MLflow server fixture. The models are ``PythonModel`` classes defined
inside functions, so cloudpickle stores them by value and a consumer (the checker) can load
them without this test module on its path.
"""

from __future__ import annotations

import os
import signal

import mlflow
import mlflow.pyfunc
import pandas as pd
import pytest

from airflow_mlops.core import serving
from airflow_mlops.core.provenance import ModelTrust
from airflow_mlops.core.serving import checker_starts, stop_serving_checker

# These tests are about the checker process, with models logged by hand: they opt in to
# loading unsigned models. tests/test_provenance.py shows a check refusing a foreign model.
TRUST_ANY = ModelTrust(trust_unsigned=True)


def check(uri: str, sample: pd.DataFrame, **kwargs) -> dict:
    return serving.serving_check(uri, sample, trust=TRUST_ANY, **kwargs)


SAMPLE = pd.DataFrame({"a": [1.0, 2.0, 3.0]})


@pytest.fixture(autouse=True)
def fresh_checker():
    stop_serving_checker()
    yield
    stop_serving_checker()


def log(python_model: mlflow.pyfunc.PythonModel) -> str:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=python_model, pip_requirements=["mlflow"]
        )
    return info.model_uri


def good_model() -> mlflow.pyfunc.PythonModel:
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input.iloc[:, 0]

    return Echo()


def test_checks_share_one_checker_and_each_starts_clean(tracking):
    class Polluter(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import sys
            import types

            sys.modules["mlops_polluted_marker"] = types.ModuleType("mlops_polluted_marker")
            return model_input.iloc[:, 0]

    class RefusesPollution(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import sys

            if "mlops_polluted_marker" in sys.modules:
                raise RuntimeError("saw the previous check's state")
            return model_input.iloc[:, 0]

    before = checker_starts()
    first = check(log(Polluter()), SAMPLE)
    second = check(log(RefusesPollution()), SAMPLE)
    assert first["ok"] is True, first
    assert second["ok"] is True, second  # forked from the clean checker, not from check 1
    assert second["predictions"] == 3
    assert checker_starts() == before + 1  # interpreter and imports paid once


def test_a_crashing_model_fails_only_its_own_check(tracking):
    class Crashes(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os

            os._exit(3)

    crashed = check(log(Crashes()), SAMPLE)
    assert crashed["ok"] is False
    assert "exited with 3 and no result" in crashed["error"], crashed
    starts = checker_starts()
    after = check(log(good_model()), SAMPLE)
    assert after["ok"] is True, after
    assert checker_starts() == starts  # the child died, the checker did not


def test_a_model_that_hangs_times_out_and_the_checker_survives(tracking):
    class Hangs(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import time

            time.sleep(120)

    hung_uri, good_uri = log(Hangs()), log(good_model())
    check(good_uri, SAMPLE)  # start the checker outside the timed check
    starts = checker_starts()
    hung = check(hung_uri, SAMPLE, timeout_seconds=3)
    assert hung["ok"] is False
    assert hung["error"] == "the serving check timed out after 3s"
    assert check(good_uri, SAMPLE)["ok"] is True
    assert checker_starts() == starts  # the child was killed, not the checker


def test_a_killed_checker_is_restarted(tracking):
    uri = log(good_model())
    assert check(uri, SAMPLE)["ok"] is True
    starts = checker_starts()
    pid = serving._CHECKER._proc.pid
    os.kill(pid, signal.SIGKILL)
    serving._CHECKER._proc.wait()
    again = check(uri, SAMPLE)
    assert again["ok"] is True, again
    assert checker_starts() == starts + 1
    assert serving._CHECKER._proc.pid != pid


def test_a_checker_leaves_no_folder_behind_however_its_parent_ends(tracking):
    uri = log(good_model())
    assert check(uri, SAMPLE)["ok"] is True
    folder = serving._CHECKER._workdir
    assert folder is not None and folder.is_dir()
    stop_serving_checker()
    assert not folder.exists()

    # A parent that ends without stopping it (a forked task process whose atexit handlers
    # were cleared) only closes the pipe: the checker removes its own folder on the way out.
    assert check(uri, SAMPLE)["ok"] is True
    proc, folder = serving._CHECKER._proc, serving._CHECKER._workdir
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not folder.exists()

    # The many-checks block of a segment chunk stops its warm checker when it ends.
    with serving.warm_serving_checker():
        assert check(uri, SAMPLE)["ok"] is True
        folder = serving._CHECKER._workdir
        assert serving._CHECKER.warm_up is True and folder.is_dir()
    assert serving._CHECKER._proc is None and not folder.exists()
    assert serving._CHECKER.warm_up is False


def test_a_chunk_launches_its_checker_early_and_its_first_check_uses_it(tracking):
    """``launch_serving_checker`` starts a warm block's checker without waiting for it (its
    start-up overlaps the chunk's first training); the first check then uses that process.
    Outside the block it starts nothing (a lone task might never check)."""
    uri = log(good_model())
    before = checker_starts()
    serving.launch_serving_checker()
    assert serving._CHECKER._proc is None and checker_starts() == before

    with serving.warm_serving_checker():
        serving.launch_serving_checker()
        proc = serving._CHECKER._proc
        assert proc is not None and proc.poll() is None and checker_starts() == before + 1
        assert serving._CHECKER._ready is False  # not waited for
        serving.launch_serving_checker()  # running already: no second process
        assert serving._CHECKER._proc is proc and checker_starts() == before + 1
        assert check(uri, SAMPLE)["ok"] is True
        assert serving._CHECKER._proc is proc and checker_starts() == before + 1
        folder = serving._CHECKER._workdir
    assert proc.poll() is not None and not folder.exists()

    # Launched and never used (every segment of the chunk was skipped): stopped all the same.
    with serving.warm_serving_checker():
        serving.launch_serving_checker()
        proc, folder = serving._CHECKER._proc, serving._CHECKER._workdir
    assert proc.poll() is not None and not folder.exists()


def test_each_check_sees_the_callers_current_environment(tracking, monkeypatch):
    class NeedsProbe(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os

            if os.environ.get("MLOPS_TEST_PROBE") != "second":
                raise RuntimeError(f"probe is {os.environ.get('MLOPS_TEST_PROBE')}")
            return model_input.iloc[:, 0]

    uri = log(NeedsProbe())
    monkeypatch.setenv("MLOPS_TEST_PROBE", "first")
    first = check(uri, SAMPLE)  # the checker starts with "first"
    assert first["ok"] is False and "probe is first" in first["error"], first
    monkeypatch.setenv("MLOPS_TEST_PROBE", "second")  # as MlflowHook.session() changes env
    second = check(uri, SAMPLE)
    assert second["ok"] is True, second


def test_the_sample_follows_the_signature_that_training_writes_for_integer_columns(tracking):
    from mlflow.models import infer_signature

    from airflow_mlops.core.serving import serving_sample

    # Training declares integer features as doubles (core/training_logging.py: log_fitted_model).
    raw = pd.DataFrame({"count": [1, 2, 3], "x": [0.5, 1.5, 2.5], "label": [0, 1, 0]})
    signature = infer_signature(raw[["count", "x"]].astype({"count": "float64"}), [0.0, 1.0, 0.0])
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(
            name="model",
            python_model=good_model(),
            signature=signature,
            pip_requirements=["mlflow"],
        ).model_uri
    refused = check(uri, raw[["count", "x"]])  # int64 as read from the holdout
    assert refused["ok"] is False and "int64 to float64" in refused["error"], refused
    sample = serving_sample(raw, uri, "label")
    assert list(sample.columns) == ["count", "x"] and str(sample["count"].dtype) == "float64"
    assert check(uri, sample)["ok"] is True
