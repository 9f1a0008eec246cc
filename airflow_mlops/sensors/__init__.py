"""Sensors on the MLflow model registry (a version becoming READY, an alias moving)."""
