"""Airflow UI plugins shipped with the provider (the read-only "MLOps" page).

Nothing is imported here: Airflow imports the plugin class by its dotted path.
"""
