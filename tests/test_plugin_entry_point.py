"""The MLOps page loads on a stock Airflow: the ``airflow.plugins`` entry point, no setting.

Airflow reads a provider's ``get_provider_info()["plugins"]`` only with ``[core]
lazy_discover_providers=False``; the ``airflow.plugins`` entry-point group is loaded in every
process whatever that setting says. Each check runs in a fresh interpreter with a temporary
``AIRFLOW_HOME`` and no ``AIRFLOW__*`` variable, so nothing from this test session leaks in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PLUGIN_TARGET = "airflow_mlops.plugins.mlops_page:MlopsPlugin"

#: Loads plugins as Airflow's API server does, then reports what it found and what the
#: plugin module cost to import (FastAPI and the app module must wait for the first read).
PROBE = """
import json, sys
from airflow import plugins_manager, settings
plugins, errors = plugins_manager._get_plugins()
mlops = [p for p in plugins if p.name == "mlops"]
after_load = {m: m in sys.modules for m in ("fastapi", "airflow_mlops.plugins.mlops_app")}
views, _ = plugins_manager._get_ui_plugins()
apps, _ = plugins_manager.get_fastapi_plugins()
print(json.dumps({
    "lazy": settings.LAZY_LOAD_PROVIDERS,
    "found": [str(p.source) for p in mlops],
    "errors": errors,
    "after_load": after_load,
    "views": [v.get("url_route") for v in views],
    "apps": [a.get("url_prefix") for a in apps],
}))
"""


def run_stock_airflow(code: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({"AIRFLOW_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("AIRFLOW_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_entry_point_names_the_light_plugin_module():
    found = {ep.name: ep.value for ep in entry_points(group="airflow.plugins")}
    assert found.get("mlops") == PLUGIN_TARGET, (
        "re-install the package (`.venv/bin/uv pip install --python .venv/bin/python --no-deps "
        f"-e .`): entry points come from the installed metadata; found {found}"
    )


@pytest.mark.timeout(300)
def test_stock_airflow_finds_the_page_without_any_setting(tmp_path):
    outcome = run_stock_airflow(PROBE, tmp_path)
    assert outcome["lazy"] is True, "the default lazy_discover_providers is in force"
    assert len(outcome["found"]) == 1 and "mlops_page" in outcome["found"][0], outcome
    assert outcome["errors"] == {}, outcome["errors"]
    # Loading plugins happens in every Airflow process: it must not build the page's app.
    assert outcome["after_load"] == {"fastapi": False, "airflow_mlops.plugins.mlops_app": False}
    assert "mlops" in outcome["views"], outcome
    assert "/mlops" in outcome["apps"], outcome
