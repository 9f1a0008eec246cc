"""Pay the operators' heavy imports once per worker instead of once per task.

Under a real scheduler every task instance is its own process. On Linux, Airflow 3.3's task
supervisor starts it with ``os.fork()`` from the executor's worker process, so a module the
worker imported *before* it forks is inherited by every task for free, and anything else is
imported again by every task (pandas, MLflow, scikit-learn, Great Expectations or
Evidently: seconds each). This module lists what each operator family imports and
imports it in the worker's parent, where Airflow allows it:

- **LocalExecutor**, from ``airflow_local_settings.py`` (imported by every Airflow process at
  start): :func:`preload_in_scheduler` preloads in the ``airflow scheduler`` process only,
  whose ``LocalExecutor`` workers are forked from it (start method ``fork``).
- **LocalExecutor**, configuration only: ``[scheduler] mp_start_method = forkserver`` and
  ``[scheduler] mp_forkserver_preload`` = :func:`forkserver_preload_option`.
- **CeleryExecutor**: ``[celery] extra_celery_config`` = ``json.dumps(``
  :func:`celery_extra_config` ``())``; Celery imports its ``imports`` modules in the worker's
  main process before it forks its pool.

See docs/deployment.md ("Paying imports once per worker") and docs/performance.md.

Fork safety: preloading only **imports** modules. Never start threads, open clients,
sessions or connections in the process that forks workers: a forked child inherits locks
held by other threads and sockets shared with its parent. :func:`preload_task_libraries`
fails when the imports themselves started a Python thread.

Importing this module is cheap (standard library only); the heavy libraries are imported only
when a preload function is called.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from airflow_mlops.core.errors import ConfigError, MlopsError

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "SCHEDULER_COMMAND",
    "PreloadError",
    "PreloadReport",
    "airflow_command",
    "celery_extra_config",
    "forkserver_preload_option",
    "modules_for",
    "preload_in_scheduler",
    "preload_task_libraries",
]

log = logging.getLogger(__name__)

# What each operator family imports inside execute() (through airflow_mlops.core.*), in the
# order a task would import them. ``airflow_mlops.core`` never imports Airflow, so these
# modules are safe to import while Airflow itself is still initialising
# (airflow_local_settings.py runs inside ``import airflow``).
FAMILIES: dict[str, tuple[str, ...]] = {
    # DataValidationOperator
    "validation": (
        "pandas",
        "pyarrow.parquet",
        "great_expectations",
        "airflow_mlops.core.validation",
    ),
    # TrainModelOperator (scikit-learn estimators, MLflow sklearn flavour, CV search stats)
    "training": (
        "pandas",
        "pyarrow.parquet",
        "sklearn",
        "sklearn.ensemble",
        "scipy.stats",
        "mlflow",
        "mlflow.sklearn",
        "mlflow.models",
        "airflow_mlops.core.training",
    ),
    # EvaluateModelOperator (loads both models from the registry and scores them)
    "evaluation": (
        "pandas",
        "sklearn",
        "mlflow",
        "mlflow.sklearn",
        "mlflow.pyfunc",
        "airflow_mlops.core.evaluation",
    ),
    # RegisterModelOperator, PromoteModelOperator, RollbackModelOperator, the sensors
    "registry": ("mlflow", "airflow_mlops.core.alias_moves", "airflow_mlops.core.serving"),
    # DriftReportOperator
    "drift": (
        "pandas",
        "pyarrow.parquet",
        "evidently",
        "evidently.presets",
        "mlflow",
        "airflow_mlops.core.drift",
    ),
    # ModelPerformanceOperator
    "performance": ("pandas", "sklearn", "mlflow", "airflow_mlops.core.performance"),
    # BatchPredictionOperator
    "prediction": ("pandas", "pyarrow.parquet", "mlflow.pyfunc", "airflow_mlops.core.prediction"),
    # Opt-in: only pipelines that train XGBoost models.
    "xgboost": ("xgboost", "mlflow.xgboost"),
    # Opt-in: only pipelines that read or write s3:// URIs. The Amazon provider's S3Hook
    # module itself is light once Airflow is loaded; boto3 is the part worth preloading.
    "s3": ("boto3",),
}
DEFAULT_FAMILIES: tuple[str, ...] = (
    "validation",
    "training",
    "evaluation",
    "registry",
    "drift",
    "performance",
    "prediction",
)
# Great Expectations logs one INFO line per public function it registers at import time.
_NOISY_LOGGERS = ("great_expectations",)
# The Airflow command whose forked workers run tasks under the LocalExecutor.
SCHEDULER_COMMAND = "scheduler"


class PreloadError(MlopsError):
    """A module of the preload could not be imported, or importing it started a thread."""


@dataclass(frozen=True)
class PreloadReport:
    """What :func:`preload_task_libraries` did: families, modules and the time it took."""

    families: tuple[str, ...]
    modules: tuple[str, ...]
    newly_imported: tuple[str, ...]
    seconds: float
    seconds_per_module: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "families": list(self.families),
            "modules": list(self.modules),
            "newly_imported": list(self.newly_imported),
            "seconds": self.seconds,
            "seconds_per_module": dict(self.seconds_per_module),
        }


def _as_families(families: str | Iterable[str] | None) -> tuple[str, ...]:
    """Family names from a list or a comma-separated string; ``None`` or ``"all"`` = defaults."""
    if families is None:
        return DEFAULT_FAMILIES
    if isinstance(families, str):
        families = families.split(",")
    names = tuple(dict.fromkeys(f.strip() for f in families if f and f.strip()))
    if not names:
        raise ConfigError("families is empty: name at least one of " + ", ".join(FAMILIES))
    if "all" in names:
        names = tuple(dict.fromkeys((*DEFAULT_FAMILIES, *(n for n in names if n != "all"))))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ConfigError(
            f"families: unknown {unknown}; known: {', '.join(FAMILIES)} (or 'all' for "
            f"{', '.join(DEFAULT_FAMILIES)})"
        )
    return names


def modules_for(families: str | Iterable[str] | None = None) -> list[str]:
    """The modules the given operator families import, each once, in import order.

    ``families``: names from :data:`FAMILIES`, a comma-separated string, or ``None`` / ``"all"``
    for :data:`DEFAULT_FAMILIES` (everything but the opt-in ``xgboost`` and ``s3``);
    ``"all,xgboost"`` adds one.
    """
    modules: dict[str, None] = {}
    for family in _as_families(families):
        modules.update(dict.fromkeys(FAMILIES[family]))
    return list(modules)


@contextlib.contextmanager
def _quiet_import_logs() -> Iterator[None]:
    """Raise noisy libraries' loggers to WARNING while importing them, then restore."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def preload_task_libraries(
    families: str | Iterable[str] | None = None, *, allow_threads: bool = False
) -> PreloadReport:
    """Import the heavy libraries of the given operator families into this process.

    Call it in the process that forks the task processes' parents (see the module docstring),
    never inside a task. It only imports: no client, session or thread is created.

    Fails closed: a module that cannot be imported raises :class:`PreloadError` naming the
    module and the family that needs it (a worker started without its preload would silently
    be slower, and an environment missing a library is better found at start than in the
    first task). So does an import that started a Python thread (unsafe to fork), unless
    ``allow_threads`` is true.
    """
    names = _as_families(families)
    owner: dict[str, str] = {}
    for family in names:
        for module in FAMILIES[family]:
            owner.setdefault(module, family)
    threads_before = set(threading.enumerate())
    already = set(sys.modules)
    per_module: dict[str, float] = {}
    started = time.perf_counter()
    with _quiet_import_logs():
        for module in owner:
            t0 = time.perf_counter()
            try:
                importlib.import_module(module)
            except Exception as err:  # ImportError, or a library failing at import
                raise PreloadError(
                    f"preload of family {owner[module]!r} failed: cannot import {module!r} "
                    f"({type(err).__name__}: {err}). Install it, or drop the family from the "
                    "preload."
                ) from err
            per_module[module] = time.perf_counter() - t0
    seconds = time.perf_counter() - started
    new_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    if new_threads and not allow_threads:
        raise PreloadError(
            "preload started Python threads "
            f"{sorted(t.name for t in new_threads)}: forking this process is not safe. "
            "Drop the family that starts them, or pass allow_threads=True if they are known "
            "to be fork-safe."
        )
    report = PreloadReport(
        families=names,
        modules=tuple(owner),
        newly_imported=tuple(m for m in owner if m not in already),
        seconds=seconds,
        seconds_per_module=per_module,
    )
    log.info("Preloaded %d modules of %s in %.2f s", len(report.modules), ", ".join(names), seconds)
    return report


def airflow_command(argv: list[str] | None = None) -> str | None:
    """The Airflow CLI command of this process (``scheduler``, ``api-server``, …), or None.

    ``airflow scheduler`` and ``python -m airflow scheduler`` both have it as ``argv[1]``.
    """
    argv = sys.argv if argv is None else argv
    return argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None


def preload_in_scheduler(
    families: str | Iterable[str] | None = None,
    *,
    argv: list[str] | None = None,
    allow_threads: bool = False,
) -> PreloadReport | None:
    """For ``airflow_local_settings.py`` with the LocalExecutor: preload in the scheduler only.

    Every Airflow process imports ``airflow_local_settings`` at start (api-server,
    dag-processor, triggerer, CLI commands); only the ``airflow scheduler`` process forks the
    LocalExecutor workers that run tasks, so only it preloads (others return None at once).
    The workers must be forked from it: the ``fork`` start method (Linux default up to Python
    3.13; ``[scheduler] mp_start_method = fork`` otherwise). Airflow's own modules are
    refused: Airflow is still initialising when ``airflow_local_settings`` is imported.
    """
    if airflow_command(argv) != SCHEDULER_COMMAND:
        return None
    names = _as_families(families)
    airflow_modules = [
        m for family in names for m in FAMILIES[family] if m.split(".")[0] == "airflow"
    ]
    if airflow_modules:
        raise ConfigError(
            f"families {list(names)} include Airflow modules {airflow_modules}: they cannot be "
            "preloaded from airflow_local_settings.py (Airflow is still initialising); use the "
            "forkserver or Celery preload for them"
        )
    return preload_task_libraries(names, allow_threads=allow_threads)


def forkserver_preload_option(families: str | Iterable[str] | None = None) -> str:
    """Value for ``[scheduler] mp_forkserver_preload`` (with ``mp_start_method = forkserver``).

    Airflow's own modules come first, so LocalExecutor workers forked from the forkserver do
    not import Airflow either. Python's forkserver **ignores** modules that fail to import:
    check them once with :func:`preload_task_libraries` in the same environment.
    """
    return ",".join(["airflow", "airflow.executors.local_executor", *modules_for(families)])


def celery_extra_config(families: str | Iterable[str] | None = None) -> dict[str, list[str]]:
    """``[celery] extra_celery_config`` content: Celery's ``imports`` setting.

    The Celery worker imports these modules in its main process at start, before it forks
    its pool processes (the task supervisors), so every task inherits them. A module that
    cannot be imported stops the worker at start (fail closed).
    """
    return {"imports": modules_for(families)}
