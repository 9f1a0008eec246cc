"""Airflow Assets that connect the pipelines: monitoring emits, continuous training listens."""

from __future__ import annotations

from airflow.sdk import Asset


def retrain_asset(model_name: str) -> Asset:
    """The Asset a monitoring task emits when drift or decay asks to retrain ``model_name``."""
    return Asset(uri=f"mlops://models/{model_name}/retrain", name=f"mlops_retrain__{model_name}")


def champion_asset(model_name: str) -> Asset:
    """The Asset a promotion emits when ``model_name@champion`` moves (downstream DAGs)."""
    return Asset(uri=f"mlops://models/{model_name}/champion", name=f"mlops_champion__{model_name}")
