"""Plain-Python MLOps logic with no Airflow import: testable without a scheduler.

Modules here may import heavy libraries (pandas, mlflow, ...) at module level; they are
only imported from inside operators' ``execute()`` methods, never at DAG-parse time.
"""
