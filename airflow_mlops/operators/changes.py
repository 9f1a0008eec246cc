"""DetectChangesOperator: skip a scheduled CT run that has nothing new to learn from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class DetectChangesOperator(MlopsBaseOperator):
    """Compare the training data and the pipeline config with the champion's training run.

    Manual, asset-triggered (new data, drift, decay) and first runs always train. A scheduled
    run trains only when the data's sha256 or the config hash differs from the champion's; else
    downstream tasks are skipped and the summary says "no change".

    :param train_uri: training data URI (templated).
    :param model_name: registered model whose ``@champion`` is compared.
    :param config_hash: fingerprint of the effective pipeline config (templated).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "train_uri",
        "model_name",
        "config_hash",
    )

    def __init__(self, *, train_uri: str, model_name: str, config_hash: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_uri = train_uri
        self.model_name = model_name
        self.config_hash = config_hash

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core.changes import decide_retrain
        from airflow_mlops.core.lineage import detect_git_commit

        data_sha256 = self.storage.sha256(self.train_uri)
        champion_tags, champion_version = self._champion_run_tags()
        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        decision = decide_retrain(
            run_type=run_type,
            data_sha256=data_sha256,
            config_hash=self.config_hash,
            champion_tags=champion_tags,
            champion_version=champion_version,
            # The same lookup the training task tags its run with (env, else .git above the DAG).
            code_version=detect_git_commit(_dag_folder(context)),
        )
        self.log.info("Retrain decision: %s (%s)", decision.train, decision.reason)
        result = decision.to_dict()
        context["ti"].xcom_push(key="return_value", value=result)
        if not decision.train:
            raise AirflowSkipException(decision.reason)
        return result

    def _champion_run_tags(self) -> tuple[dict[str, str] | None, str | None]:
        from airflow_mlops.core.registry import resolve_champion

        with self.mlflow_hook.session() as client:
            champion = resolve_champion(client, self.model_name)
            if champion is None:
                return None, None
            if not champion.run_id:
                return {}, champion.version
            return dict(client.get_run(champion.run_id).data.tags), champion.version


def _dag_folder(context: Context) -> str | None:
    """Folder of the DAG file, as ``TrainModelOperator`` passes it to ``detect_git_commit``."""
    import os

    fileloc = getattr(context.get("dag"), "fileloc", None)
    return os.path.dirname(fileloc) if fileloc else None
