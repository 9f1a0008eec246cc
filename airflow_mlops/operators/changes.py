"""DetectChangesOperator: skip a scheduled CT run that has nothing new to learn from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.operators.base import MlopsBaseOperator, as_data_window

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.changes import DataChange
    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.manifest import Manifest

__all__ = [
    "TRIGGER_TAG_XCOM_KEY",
    "TRIGGER_XCOM_KEY",
    "WINDOW_END_XCOM_KEY",
    "DetectChangesOperator",
]

#: XCom key of the record of the new-data asset event that triggered the run.
TRIGGER_XCOM_KEY = "trigger"
#: XCom key of the training run's ``mlops.trigger`` tag value (:func:`core.changes.trigger_tag`).
TRIGGER_TAG_XCOM_KEY = "trigger_tag"
#: XCom key of the partition the run's window ends with ("" = the newest there is); the
#: factories template the validate and train tasks' ``window_end`` from it.
WINDOW_END_XCOM_KEY = "window_end"


class DetectChangesOperator(MlopsBaseOperator):
    """Compare the training window and the pipeline config with the champion's training run.

    Manual, asset-triggered (new data, drift, decay) and first runs always train. A scheduled
    run trains only when the window's files, the config hash or the code commit differ from
    the champion's; else downstream tasks are skipped and the summary says "no change". The
    files are compared by listing (path, size, ETag/mtime) with the champion's
    ``mlops/manifest.json``, so a run with nothing new reads no data file; a champion without
    a manifest is compared by content hash (which reads the window's files).

    A run triggered by the new-data asset (``new_data_asset_uri``) ends its window with the
    partition that landed: the event's record goes to XCom ``trigger`` and its partition to
    XCom ``window_end``.

    :param train_uri: training data: a file, folder/prefix (Hive partitions) or glob (templated).
    :param model_name: registered model whose ``@champion`` is compared.
    :param config_hash: fingerprint of the effective pipeline config (templated).
    :param window: the ``data.window`` setting (a ``DataWindow`` or its mapping; default all).
    :param new_data_asset_uri: URI of the pipeline's new-data Asset, if it has one.
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "train_uri",
        "model_name",
        "config_hash",
    )

    def __init__(
        self,
        *,
        train_uri: str,
        model_name: str,
        config_hash: str,
        window: DataWindow | Mapping[str, Any] | str | None = None,
        new_data_asset_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_uri = train_uri
        self.model_name = model_name
        self.config_hash = config_hash
        self.window = window
        self.new_data_asset_uri = new_data_asset_uri

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core.changes import (
            ALWAYS_TRAIN_RUN_TYPES,
            decide_retrain,
            new_data_trigger,
            trigger_tag,
        )
        from airflow_mlops.core.lineage import detect_git_commit

        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        trigger = new_data_trigger(_triggering_events(context), self.new_data_asset_uri)
        window_end = (trigger or {}).get("window_end") or ""
        ti = context["ti"]
        ti.xcom_push(key=WINDOW_END_XCOM_KEY, value=window_end)
        ti.xcom_push(key=TRIGGER_TAG_XCOM_KEY, value=trigger_tag(run_type, trigger))
        if trigger:
            ti.xcom_push(key=TRIGGER_XCOM_KEY, value=trigger)
            self.log.info("Triggered by new data: %s", trigger)
        champion_tags, champion_version, champion_run = self._champion()
        # Only a scheduled run's decision depends on the data; the others train anyway.
        data = (
            self._compare_data(champion_tags, champion_run, window_end or None)
            if champion_tags is not None and run_type not in ALWAYS_TRAIN_RUN_TYPES
            else None
        )
        decision = decide_retrain(
            run_type=run_type,
            config_hash=self.config_hash,
            champion_tags=champion_tags,
            data_changed=bool(data and data.changed),
            champion_version=champion_version,
            # The same lookup the training task tags its run with (env, else .git above the DAG).
            code_version=detect_git_commit(_dag_folder(context)),
        )
        self.log.info("Retrain decision: %s (%s); data: %s", decision.train, decision.reason, data)
        result = {
            **decision.to_dict(),
            "data": data.summary() if data else None,
            "trigger": trigger,
        }
        ti.xcom_push(key="return_value", value=result)
        if not decision.train:
            raise AirflowSkipException(decision.reason)
        return result

    # -- data --------------------------------------------------------------------------------
    def _compare_data(
        self, champion_tags: Mapping[str, str], run_id: str | None, window_end: str | None
    ) -> DataChange:
        """List the window (no read) and compare it with the champion's manifest, else hash."""
        from airflow_mlops.core.changes import compare_with_hash, compare_with_manifest
        from airflow_mlops.core.data_window import select_window
        from airflow_mlops.core.datasets import resolve_files
        from airflow_mlops.core.lineage import TAG_DATA_SHA256
        from airflow_mlops.hooks.storage import StorageHook

        uri = self.train_uri.strip()
        fs = StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem(uri)
        files = select_window(resolve_files(fs, uri), self._window(), end=window_end)
        manifest = self._champion_manifest(run_id)
        if manifest is not None:
            return compare_with_manifest(manifest, files, fs)
        self.log.info("The champion's run has no manifest: comparing content hashes.")
        return compare_with_hash(fs, files, champion_tags.get(TAG_DATA_SHA256))

    def _window(self) -> DataWindow:
        return as_data_window(self.window)

    def _champion_manifest(self, run_id: str | None) -> Manifest | None:
        """The champion's ``mlops/manifest.json``, or ``None`` when its run logged none."""
        from airflow_mlops.core.comparison import run_manifest

        with self.mlflow_hook.session() as client:
            return run_manifest(client, run_id)

    # -- champion ----------------------------------------------------------------------------
    def _champion(self) -> tuple[dict[str, str] | None, str | None, str | None]:
        """(training-run tags, version, run id) of ``@champion``; all ``None`` without one."""
        from airflow_mlops.core.registry import resolve_champion

        with self.mlflow_hook.session() as client:
            champion = resolve_champion(client, self.model_name)
            if champion is None:
                return None, None, None
            if not champion.run_id:
                return {}, champion.version, None
            tags = dict(client.get_run(champion.run_id).data.tags)
            return tags, champion.version, champion.run_id

    def _champion_run_tags(self) -> tuple[dict[str, str] | None, str | None]:
        tags, version, _ = self._champion()
        return tags, version


def _triggering_events(context: Context) -> list[dict[str, Any]]:
    """The run's triggering asset events as plain mappings (none for other run types)."""
    accessor = context.get("triggering_asset_events") or {}
    events = []
    for asset_events in accessor.values():
        for event in asset_events:
            events.append(
                {
                    "uri": event.asset.uri,
                    "extra": dict(event.extra or {}),
                    "partition_key": getattr(event, "partition_key", None),
                    "source_dag_id": event.source_dag_id,
                    "source_run_id": event.source_run_id,
                    "source_task_id": event.source_task_id,
                    "timestamp": event.timestamp.isoformat() if event.timestamp else None,
                }
            )
    return events


def _dag_folder(context: Context) -> str | None:
    """Folder of the DAG file, as ``TrainModelOperator`` passes it to ``detect_git_commit``."""
    import os

    fileloc = getattr(context.get("dag"), "fileloc", None)
    return os.path.dirname(fileloc) if fileloc else None
