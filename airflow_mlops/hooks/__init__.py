"""Hooks: connections and clients (MLflow, storage, the model-signing key)."""
