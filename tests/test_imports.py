"""Rule 1: importing the provider must not import heavy ML libraries (DAG parse stays cheap)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
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
        "import airflow_mlops.core.alias_moves, airflow_mlops.core.promotion_lock\n"
        "import airflow_mlops.core.serving\n"
        "import airflow_mlops.core.evaluation, airflow_mlops.core.changes\n"
        "print(json.dumps(sorted(m for m in ('sklearn', 'xgboost') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


# -- import graph -----------------------------------------------------------------------------


def package_modules() -> dict[str, Path]:
    """Every module of the package (``core/`` included), by dotted name."""
    root = Path(airflow_mlops.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(path: Path) -> Iterator[str]:
    """Dotted names of every ``import`` in the file, module level or inside functions
    (a lazy import is still an edge: it runs whenever that function does)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = package_modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {owner(n) for n in imported_names(path) if n.startswith("airflow_mlops")}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert "airflow_mlops.core.approval" in graph["airflow_mlops.operators.approval"]
    assert not import_cycles(graph)


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_core_has_no_airflow_import():
    offenders = {
        name: sorted(n for n in imported_names(path) if n == "airflow" or n.startswith("airflow."))
        for name, path in package_modules().items()
        if name.startswith("airflow_mlops.core")
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_approval_protocol_is_shared_not_imported_across_operators():
    """Both operators take the option names, XCom key and body text from core.approval;
    importing the registry operators must not import Airflow's human-in-the-loop operator."""
    graph = import_graph()
    assert "airflow_mlops.operators.registry" not in graph["airflow_mlops.operators.approval"]
    assert "airflow_mlops.operators.approval" not in graph["airflow_mlops.operators.registry"]
    code = (
        "import sys, airflow_mlops.operators.registry\n"
        "print('airflow.providers.standard.operators.hitl' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_core_modules_split_along_their_seams_import_in_one_direction():
    """Evaluation takes the champion lookup from the registry (not the reverse), the alias
    moves take their lock from core.promotion_lock, and validation does not load suite
    inference."""
    graph = import_graph()
    assert "airflow_mlops.core.registry" in graph["airflow_mlops.core.evaluation"]
    assert "airflow_mlops.core.evaluation" not in graph["airflow_mlops.core.registry"]
    assert "airflow_mlops.core.promotion_lock" in graph["airflow_mlops.core.alias_moves"]
    assert "airflow_mlops.core.registry" not in graph["airflow_mlops.core.promotion_lock"]
    assert "airflow_mlops.core.validation" in graph["airflow_mlops.core.suite_inference"]
    assert "airflow_mlops.core.suite_inference" not in graph["airflow_mlops.core.validation"]
