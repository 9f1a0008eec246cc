"""DAG factories: typed pipeline config in, Airflow DAGs or TaskGroups out.

Imports are lazy (module ``__getattr__``) so ``import airflow_mlops.factories`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PipelineConfig": "airflow_mlops.factories.config",
    "load_config": "airflow_mlops.factories.config",
    "parse_config": "airflow_mlops.factories.config",
    "continuous_training_dag": "airflow_mlops.factories.continuous_training",
    "continuous_training_group": "airflow_mlops.factories.continuous_training",
    "monitoring_dag": "airflow_mlops.factories.monitoring",
    "monitoring_group": "airflow_mlops.factories.monitoring",
    "dags_from_yaml": "airflow_mlops.factories.loader",
    "PromotionTasks": "airflow_mlops.factories.promotion",
    "promotion_tasks": "airflow_mlops.factories.promotion",
    "rollback_dag_params": "airflow_mlops.factories.promotion",
    "freeze_dag_params": "airflow_mlops.factories.promotion",
    "rollback_dag": "airflow_mlops.factories.rollback",
    "freeze_dag": "airflow_mlops.factories.rollback",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
