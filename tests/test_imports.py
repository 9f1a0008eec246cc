"""Rule 1: importing the provider must not import heavy ML libraries (DAG parse stays cheap)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import airflow_mlops

HEAVY = (
    "pandas",
    "numpy",
    "mlflow",
    "great_expectations",
    "evidently",
    "sklearn",
    "xgboost",
    "scipy",
)


def public_modules() -> list[str]:
    """Every airflow_mlops module an Airflow process may import at parse time (not core/)."""
    root = Path(airflow_mlops.__file__).parent
    names = ["airflow_mlops"]
    for info in pkgutil.walk_packages([str(root)], prefix="airflow_mlops."):
        if info.name.startswith("airflow_mlops.core"):
            continue
        names.append(info.name)
    return sorted(names)


def heavy_modules_after_import(modules: list[str]) -> dict[str, list[str]]:
    code = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "out = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    out[name] = sorted(m for m in heavy if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_public_modules_are_found():
    modules = public_modules()
    assert "airflow_mlops.hooks.mlflow" in modules
    assert "airflow_mlops.operators.base" in modules


def test_no_heavy_import_at_module_level():
    loaded = heavy_modules_after_import(public_modules())
    offenders = {name: heavy for name, heavy in loaded.items() if heavy}
    assert not offenders, f"heavy libraries imported at module level: {offenders}"


def test_registry_and_change_detection_do_not_pay_for_scikit_learn():
    """Register, promote, rollback and detect_changes tasks run on every CT run; under the
    real scheduler each pays its own imports, so they must not import scikit-learn/XGBoost
    (about 1 s per task on this machine) that only training and scoring need."""
    code = (
        "import sys, json\n"
        "import airflow_mlops.core.registry, airflow_mlops.core.serving\n"
        "import airflow_mlops.core.evaluation, airflow_mlops.core.changes\n"
        "print(json.dumps(sorted(m for m in ('sklearn', 'xgboost') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
