"""A small continuous-training DAG for the end-to-end test, built on the provider's hooks.

Stand-in for the CT DAG of the DAG factory (``dags/``) until it lands: it validates a data
batch, trains a model tracked in MLflow, registers it and promotes it to ``@champion`` with
the provider's registry functions (alias history included), then records a drift check.
Reports go to S3 (the stack's moto server) through the ``aws_default`` connection; MLflow is
reached through ``mlflow_default``. Heavy libraries are imported inside the tasks.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, task

from airflow_mlops.assets import champion_asset

MODEL_NAME = "e2e_breast_cancer"
EXPERIMENT = "e2e_ct"
BUCKET = "mlops"


def _run_context(context: Any) -> Any:
    from airflow_mlops.core.lineage import RunContext

    ti = context["ti"]
    return RunContext(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        try_number=ti.try_number,
        map_index=ti.map_index if ti.map_index is not None else -1,
    )


with DAG(
    dag_id="e2e_ct",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "e2e"],
    doc_md=__doc__,
):

    @task
    def validate_data(**context: Any) -> dict[str, Any]:
        """Write the batch to S3 and a validation summary next to it."""
        from sklearn.datasets import load_breast_cancer

        from airflow_mlops.hooks.storage import StorageHook

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        storage = StorageHook().get_storage()
        run_key = context["run_id"].replace(":", "_").replace("+", "_")
        data_uri = f"s3://{BUCKET}/e2e/{run_key}/batch.parquet"
        sha256 = storage.write_table(frame, data_uri)
        failures = [c for c in frame.columns if frame[c].isna().any()]
        summary = {
            "success": not failures and len(frame) > 100,
            "row_count": len(frame),
            "column_count": len(frame.columns),
            "failures": failures,
            "data_uri": data_uri,
            "data_sha256": sha256,
        }
        report_uri = f"s3://{BUCKET}/e2e/{run_key}/validation.json"
        storage.write_json(report_uri, summary)
        return {"data_uri": data_uri, "report_uri": report_uri, "success": summary["success"]}

    @task
    def train(validation: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Train a small classifier and log it to MLflow (one run per task instance)."""
        import mlflow
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from airflow_mlops.core.lineage import TAG_IDEMPOTENCY_KEY
        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.hooks.storage import StorageHook

        run_context = _run_context(context)
        frame = StorageHook().get_storage().read_table(validation["data_uri"]).frame
        X, y = frame.drop(columns=["target"]), frame["target"]
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=0.25, random_state=7, stratify=y
        )
        hook = MlflowHook()
        with hook.session() as client:
            experiment_id = hook.get_or_create_experiment(EXPERIMENT)
            previous = client.search_runs(
                [experiment_id], f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{run_context.idempotency_key}'"
            )
            if previous and previous[0].data.tags.get("mlops.model_uri"):  # a retry: reuse it
                run = previous[0]
                return {"run_id": run.info.run_id, "model_uri": run.data.tags["mlops.model_uri"]}
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
            model.fit(X_train, y_train)
            scores = model.predict_proba(X_test)[:, 1]
            predictions = model.predict(X_test)
            with mlflow.start_run(experiment_id=experiment_id, tags=run_context.as_tags()) as run:
                mlflow.log_metrics(
                    {
                        "holdout_accuracy": accuracy_score(y_test, predictions),
                        "holdout_f1": f1_score(y_test, predictions),
                        "holdout_roc_auc": roc_auc_score(y_test, scores),
                    }
                )
                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    pip_requirements=["scikit-learn", "skops"],
                    input_example=X_test.head(2),
                )
                mlflow.set_tags(
                    {
                        "mlops.stage": "training",
                        "mlops.model_name": MODEL_NAME,
                        "mlops.model_uri": info.model_uri,
                        "mlops.data.uri": validation["data_uri"],
                        "mlops.validation.success": str(validation["success"]).lower(),
                        "mlops.validation.report_uri": validation["report_uri"],
                    }
                )
        return {"run_id": run.info.run_id, "model_uri": info.model_uri}

    @task(outlets=[champion_asset(MODEL_NAME)])
    def register_and_promote(trained: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Register the model, make it the challenger, then the champion (with history)."""
        from airflow_mlops.core.evaluation import current_alias_version
        from airflow_mlops.core.registry import (
            Actor,
            promote_to_champion,
            register_version,
            set_challenger,
        )
        from airflow_mlops.hooks.mlflow import MlflowHook

        run_context = _run_context(context)
        with MlflowHook().session() as client:
            registration = register_version(
                client,
                MODEL_NAME,
                trained["model_uri"],
                context=run_context,
                run_id=trained["run_id"],
            )
            actor = Actor(
                reason="end-to-end test: promote the freshly trained model", context=run_context
            )
            set_challenger(client, MODEL_NAME, registration.version, actor)
            champion = current_alias_version(client, MODEL_NAME, "champion")
            move = promote_to_champion(
                client, MODEL_NAME, registration.version, evaluated_champion=champion, actor=actor
            )
        return {"version": registration.version, "outcome": move.outcome}

    @task
    def check_drift(promoted: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Record a (simple) drift check of the batch against itself as an MLflow run."""
        import mlflow

        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.hooks.storage import StorageHook

        run_key = context["run_id"].replace(":", "_").replace("+", "_")
        report_uri = f"s3://{BUCKET}/e2e/{run_key}/drift.json"
        report = {"dataset_drift": False, "drift_share": 0.0, "model_version": promoted["version"]}
        StorageHook().get_storage().write_json(report_uri, report)
        hook = MlflowHook()
        with hook.session():
            experiment_id = hook.get_or_create_experiment(EXPERIMENT)
            with mlflow.start_run(
                experiment_id=experiment_id, tags=_run_context(context).as_tags()
            ) as run:
                mlflow.log_metric("drift_share", 0.0)
                mlflow.set_tags(
                    {
                        "mlops.stage": "drift",
                        "mlops.model_name": MODEL_NAME,
                        "mlops.drift.detected": "false",
                        "mlops.drift.report_uri": report_uri,
                    }
                )
        return {"run_id": run.info.run_id, "report_uri": report_uri}

    check_drift(register_and_promote(train(validate_data())))
