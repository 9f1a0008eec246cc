"""The base of the monitoring operators: the retrain signal, its debounce and the policies.

:class:`RetrainSignalOperator` is what :class:`~airflow_mlops.operators.drift.DriftReportOperator`
and :class:`~airflow_mlops.operators.performance.ModelPerformanceOperator` share. Both end
the same way: when their check fires they send the model's retrain signal, an Airflow Asset
event on :func:`airflow_mlops.assets.retrain_asset` that the continuous-training DAG is
scheduled on. The event is emitted at run time through an :class:`~airflow.sdk.AssetAlias`
outlet (:func:`retrain_alias`), so a task that finds nothing emits nothing (a plain Asset
outlet would get an event on every successful run). The retrain asset is also declared as an
inlet: the debounce reads its last event through Airflow's Task SDK (``inlet_events``),
which works on every executor without database access from the task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.standard.operators.branch import BranchMixIn
from airflow.sdk import AssetAlias

from airflow_mlops.assets import retrain_asset
from airflow_mlops.core.errors import ConfigError, EmptyBatchError
from airflow_mlops.core.retrain_signal import (
    ACTIVE_RUN_STATES,
    DEFAULT_DEBOUNCE_SECONDS,
    ON_EMPTY_POLICIES,
    ON_TRIGGER_POLICIES,
)
from airflow_mlops.core.storage import join_uri
from airflow_mlops.core.values import is_templated
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, check_choice, path_safe

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_mlops.core.champion import ChampionFacts

__all__ = ["RetrainSignalOperator", "retrain_alias"]

#: Task ids a ``branch`` policy follows: one, several, or none.
TaskIds = str | Sequence[str] | None


def retrain_alias(model_name: str) -> AssetAlias:
    """The alias through which monitoring tasks emit ``retrain_asset(model_name)`` events."""
    return AssetAlias(name=f"mlops_retrain_alias__{model_name}")


class RetrainSignalOperator(MlopsBaseOperator, BranchMixIn):
    """Base of the monitoring operators: the retrain signal, its debounce and the policies.

    A subclass names its trigger policy (``policy_field``, e.g. ``on_drift``), stores the
    policy under that attribute, then calls :meth:`check_policies`; its ``execute()`` starts
    with :meth:`checked_policies` and ends with :meth:`finish`.

    :param model_name: registered model name. Not templated: it names the retrain Asset,
        which Airflow must know when it parses the DAG.
    :param on_empty: no usable input rows: ``fail`` (default) or ``skip`` (templated).
    :param debounce_seconds: no second retrain signal within this many seconds of the last
        event of the retrain asset, whoever emitted it (templated; default 6 h).
    :param ct_dag_id: the continuous-training DAG; while it has a queued or running run no
        signal is sent (templated; ``None`` skips that check).
    :param report_folder_uri: folder (local or ``s3://``) the reports are written to
        (templated); default: the run's artifacts folder. The report files themselves are the
        ``report_uri`` of the result.
    :param branches: ``(task ids to follow when the check fires, task ids to follow when it
        does not)`` for the ``branch`` policy; subclasses name them (``drift_task_ids``, ...).
    """

    #: The parameter holding the trigger policy, as users know it (``on_drift``, ``on_decay``).
    policy_field: ClassVar[str]
    #: ``trigger`` of the retrain asset event: which check asked to retrain.
    signal_trigger: ClassVar[str]

    inherits_from_skipmixin = True
    operator_extra_links = mlflow_links()
    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "debounce_seconds",
        "ct_dag_id",
        "report_folder_uri",
        "on_empty",
    )
    ui_color = "#f7e3d5"

    def __init__(
        self,
        *,
        model_name: str,
        on_empty: str = "fail",
        debounce_seconds: float | str = DEFAULT_DEBOUNCE_SECONDS,
        ct_dag_id: str | None = None,
        report_folder_uri: str | None = None,
        branches: tuple[TaskIds, TaskIds] = (None, None),
        **kwargs: Any,
    ) -> None:
        if not isinstance(model_name, str) or not model_name.strip():
            raise ConfigError(f"model_name must be a non-empty string, got {model_name!r}")
        if is_templated(model_name):
            raise ConfigError(
                "model_name cannot be a template: it names the retrain Asset, which Airflow "
                f"needs at DAG-parse time (got {model_name!r})"
            )
        asset, alias = retrain_asset(model_name), retrain_alias(model_name)
        kwargs["inlets"] = [*(kwargs.get("inlets") or []), asset]
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), alias]
        super().__init__(**kwargs)
        self.model_name = model_name
        self.retrain_asset: Asset = asset
        self.retrain_alias = alias
        self.on_empty = on_empty
        self.debounce_seconds = debounce_seconds
        self.ct_dag_id = ct_dag_id
        self.report_folder_uri = report_folder_uri
        self.trigger_task_ids, self.no_trigger_task_ids = branches

    # -- the policies --------------------------------------------------------------------------
    @property
    def trigger_policy(self) -> Any:
        """The value of the trigger policy parameter (``on_drift``, ``on_decay``)."""
        return getattr(self, self.policy_field)

    def check_policies(self) -> None:
        """Parse-time checks of the policies; templated values wait for rendering."""
        policy = self.trigger_policy
        check_choice(policy, ON_TRIGGER_POLICIES, self.policy_field)
        check_choice(self.on_empty, ON_EMPTY_POLICIES, "on_empty")
        if not is_templated(policy):
            self.validate_policy_fields(policy, self.policy_field)

    def checked_policies(self) -> str:
        """Execute-time checks of the rendered policies and debounce; the trigger policy."""
        from airflow_mlops.core.retrain_signal import validate_debounce_seconds

        policy = self.trigger_policy
        check_choice(policy, ON_TRIGGER_POLICIES, self.policy_field, rendered=True)
        self.validate_policy_fields(policy, self.policy_field)
        check_choice(self.on_empty, ON_EMPTY_POLICIES, "on_empty", rendered=True)
        validate_debounce_seconds(self.debounce_seconds)
        return policy

    # -- reading the state of the retrain signal -----------------------------------------------
    def last_signal_at(self, context: Context) -> datetime | None:
        """Timestamp of the latest event of the retrain asset, from Airflow's metadata."""
        events = context["inlet_events"][self.retrain_asset].ascending(False).limit(1)
        latest = list(events)
        return latest[0].timestamp if latest else None

    def active_ct_runs(self, context: Context) -> int:
        """Queued or running runs of ``ct_dag_id`` (this task's own run excluded), not
        counting runs that only wait for a human to approve a promotion: a pending approval
        must not hold back the next retrain (a newer challenger supersedes it)."""
        if not self.ct_dag_id:
            return 0
        ti = context["ti"]
        count = int(ti.get_dr_count(dag_id=str(self.ct_dag_id), states=list(ACTIVE_RUN_STATES)))
        if count:
            count -= int(
                ti.get_ti_count(
                    dag_id=str(self.ct_dag_id),
                    task_ids=["approve_promotion"],
                    states=["deferred", "awaiting_input"],
                )
            )
        if str(self.ct_dag_id) == ti.dag_id:
            count -= 1  # the monitoring step runs inside the CT DAG itself
        return max(count, 0)

    # -- acting on a verdict -------------------------------------------------------------------
    def finish(
        self,
        context: Context,
        *,
        policy: str,
        triggered: bool,
        result: dict[str, Any],
        **event_extra: Any,
    ) -> dict[str, Any]:
        """Apply ``policy`` to the verdict; returns the XCom result (or raises/branches).

        ``result`` holds the verdict's ``reason``, the ``champion_version`` and the
        ``report_uri``; they go into the retrain event with ``event_extra``.
        """
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from airflow_mlops.core.retrain_signal import (
            decide_retrain_signal,
            validate_debounce_seconds,
        )

        reason = result["reason"]
        if policy == "emit":
            decision = decide_retrain_signal(
                triggered=triggered,
                trigger_reason=reason,
                now=datetime.now(timezone.utc),
                last_signal_at=self.last_signal_at(context) if triggered else None,
                debounce_seconds=validate_debounce_seconds(self.debounce_seconds),
                active_ct_runs=self.active_ct_runs(context) if triggered else 0,
            )
            result["retrain_signal"] = decision.to_dict()
            if decision.emit:
                extra = {
                    "trigger": self.signal_trigger,
                    "model_name": self.model_name,
                    "champion_version": result["champion_version"],
                    **event_extra,
                    "report_uri": result["report_uri"],
                    "reason": reason,
                }
                context["outlet_events"][self.retrain_alias].add(self.retrain_asset, extra=extra)
                self.record_signal_in_mlflow(reason, context)
                self.log.warning("Retrain signal emitted for %s: %s", self.model_name, reason)
            else:
                self.log.info("No retrain signal: %s", decision.reason)
            return result
        result["retrain_signal"] = {"emit": False, "reason": f"policy {policy!r} never emits"}
        if policy == "branch":
            follow = self.trigger_task_ids if triggered else self.no_trigger_task_ids
            self.push_result(context, result)
            self.do_branch(context, follow)  # raises to skip the other branches
            return result
        if not triggered:
            return result
        self.push_result(context, result)
        if policy == "fail":
            raise AirflowFailException(reason)
        raise AirflowSkipException(reason)

    def push_result(self, context: Context, result: dict[str, Any]) -> None:
        """The task will not return normally: push the result so it stays inspectable."""
        if self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=result)

    def record_signal_in_mlflow(self, reason: str, context: Context) -> None:
        """Tag the registered model with the last signal, for people looking at MLflow."""
        from mlflow.exceptions import MlflowException

        from airflow_mlops.core.retrain_signal import TAG_LAST_RETRAIN_SIGNAL

        run = self.run_context(context)
        value = json.dumps(
            {
                "at": datetime.now(timezone.utc).isoformat(),
                "reason": reason[:1000],
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "task_id": run.task_id,
            }
        )
        try:
            with self.mlflow_hook.session() as client:
                client.set_registered_model_tag(self.model_name, TAG_LAST_RETRAIN_SIGNAL, value)
        except MlflowException as err:
            # The Airflow event is the signal; the tag is a convenience for MLflow users.
            self.log.warning("Could not tag %s with the retrain signal: %s", self.model_name, err)

    def validate_policy_fields(self, policy: str, field: str) -> None:
        if policy == "branch" and not (self.trigger_task_ids or self.no_trigger_task_ids):
            raise ConfigError(
                f"{field}='branch' needs the task ids to follow (the *_task_ids parameters)"
            )

    def report_location(self, context: Context, name: str) -> str:
        """``report_folder_uri/<name>`` when given, else the run's default report folder."""
        if self.report_folder_uri:
            return join_uri(str(self.report_folder_uri), name)
        return self.default_report_uri(context, name)

    def mlflow_artifact_folder(self, context: Context, kind: str) -> str:
        """Same folder on every try of a task instance: a retry overwrites, never duplicates."""
        run = self.run_context(context)
        parts = [
            "monitoring",
            kind,
            path_safe(run.dag_id),
            path_safe(run.run_id),
            path_safe(run.task_id),
        ]
        if run.map_index >= 0:
            parts.append(str(run.map_index))
        return "/".join(parts)

    @contextmanager
    def empty_input_policy(self) -> Iterator[None]:
        """``on_empty``: an :class:`EmptyBatchError` in the block fails the task or skips it."""
        from airflow.sdk.exceptions import AirflowSkipException

        try:
            yield
        except EmptyBatchError as err:
            if self.on_empty == "skip":
                raise AirflowSkipException(str(err)) from err
            raise

    def airflow_task(self, context: Context) -> dict[str, Any]:
        """The task instance, as recorded with a verdict in MLflow."""
        run = self.run_context(context)
        return {
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "task_id": run.task_id,
            "map_index": run.map_index,
        }

    def read_champion(self) -> ChampionFacts | None:
        from airflow_mlops.core.champion import read_champion

        with self.mlflow_hook.session() as client:
            return read_champion(client, self.model_name)

    def link_champion(self, context: Context, champion: ChampionFacts) -> None:
        persist_mlflow_links(
            context,
            tracking_uri=self.mlflow_hook.tracking_uri,
            experiment_id=champion.experiment_id,
            run_id=champion.run_id,
            model_name=champion.model_name,
            model_version=champion.version,
        )
