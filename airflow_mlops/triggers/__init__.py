"""Triggers that wait on the MLflow model registry in the triggerer."""
