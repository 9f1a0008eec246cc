"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Must stay import-free: Airflow calls it while it initialises its own configuration.
"""

from __future__ import annotations

from typing import Any

from airflow_mlops import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-mlops",
        "name": "MLOps (continuous training)",
        "description": (
            "Continuous training (MLOps level 1) on Airflow: Great Expectations validation, "
            "MLflow-tracked training, champion/challenger promotion and Evidently monitoring."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "MLflow",
                "external-doc-url": "https://mlflow.org/docs/latest/",
                "tags": ["software"],
            },
            {
                "integration-name": "Great Expectations",
                "external-doc-url": "https://docs.greatexpectations.io/docs/core/introduction/",
                "tags": ["software"],
            },
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_mlops.hooks.mlflow.MlflowHook",
                "hook-name": "MLflow",
                "connection-type": "mlflow",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "Tracking URI",
                        "login": "Username (basic auth)",
                        "password": "Password (basic auth)",
                    },
                    "placeholders": {
                        "host": "http://mlflow:5000, sqlite:////data/mlflow.db or /data/mlruns",
                        "login": "optional",
                        "password": "optional",
                        "extra": '{"token": "...", "registry_uri": "...", "s3_endpoint_url": "...", '
                        '"verify_tls": true, "timeout": 30, "max_retries": 2}',
                    },
                },
                "conn-fields": {
                    "token": {
                        "label": "Bearer token",
                        "description": "Sent as MLFLOW_TRACKING_TOKEN (masked in logs).",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "registry_uri": {
                        "label": "Registry URI",
                        "description": "Model registry URI when it differs from the tracking URI.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "s3_endpoint_url": {
                        "label": "S3 endpoint URL for artifacts",
                        "description": "For S3-compatible stores (MinIO, moto); sets MLFLOW_S3_ENDPOINT_URL.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify_tls": {
                        "label": "Verify TLS certificates",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "timeout": {
                        "label": "HTTP timeout (seconds)",
                        "schema": {"type": ["integer", "null"], "default": 30},
                    },
                    "max_retries": {
                        "label": "HTTP retries",
                        "schema": {"type": ["integer", "null"], "default": 2},
                    },
                },
            }
        ],
        "operators": [
            {
                "integration-name": "MLflow",
                "python-modules": [
                    "airflow_mlops.operators.changes",
                    "airflow_mlops.operators.prediction",
                ],
            },
            {
                "integration-name": "Great Expectations",
                "python-modules": ["airflow_mlops.operators.validation"],
            },
        ],
        "sensors": [
            {"integration-name": "MLflow", "python-modules": ["airflow_mlops.sensors.registry"]}
        ],
        "triggers": [
            {"integration-name": "MLflow", "python-modules": ["airflow_mlops.triggers.registry"]}
        ],
        "hooks": [
            {
                "integration-name": "MLflow",
                "python-modules": ["airflow_mlops.hooks.mlflow", "airflow_mlops.hooks.storage"],
            }
        ],
        "extra-links": [
            "airflow_mlops.links.mlflow.MlflowExperimentLink",
            "airflow_mlops.links.mlflow.MlflowRunLink",
            "airflow_mlops.links.mlflow.MlflowModelVersionLink",
        ],
        # The MLOps page plugin is declared once, in the ``airflow.plugins`` entry-point group
        # (pyproject.toml), which Airflow loads whatever lazy_discover_providers says; declaring
        # it here too would register it twice when that setting is False.
    }
