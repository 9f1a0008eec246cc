"""``SupersedableApprovalTrigger``: Airflow's human-in-the-loop wait, plus "a newer challenger
took its place".

Airflow 3.3 parks a human-in-the-loop task in ``awaiting_input`` with no trigger: only a
human answer (Core API) or the scheduler's timeout sweep resumes it. A promotion approval
must also end when a newer run's challenger qualifies (the older request is *superseded*),
and only something polling the registry can see that. So
:class:`~airflow_mlops.operators.approval.PromotionApprovalOperator` defers to this subclass
of the standard provider's :class:`HITLTrigger` (the path Airflow < 3.3 used for every
human-in-the-loop task). It keeps the provider's answer and timeout handling unchanged (the
answer still comes from Airflow's record; an answer posted through the Core API resumes a
deferred task directly) and, every ``supersede_poll_interval`` seconds, reads the version's
``mlops.approval.superseded_by`` tag in MLflow. When the tag is there it fires
``{"superseded_by": {...}}``; the operator records that and never approves.

An MLflow outage only delays that check (logged): the promote task reads the tag again
before it moves anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.standard.triggers.hitl import HITLTrigger
from airflow.sdk.timezone import utcnow
from airflow.triggers.base import TriggerEvent

__all__ = ["SupersedableApprovalTrigger"]


class SupersedableApprovalTrigger(HITLTrigger):
    """:class:`HITLTrigger` that also ends when the model version is superseded.

    :param model_name: registered model of the version waiting for approval.
    :param version: that version.
    :param mlflow_conn_id: MLflow connection of the registry.
    :param supersede_poll_interval: seconds between registry reads.
    Other parameters: those of :class:`HITLTrigger`.
    """

    def __init__(
        self,
        *,
        model_name: str,
        version: str,
        mlflow_conn_id: str,
        supersede_poll_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = str(version)
        self.mlflow_conn_id = mlflow_conn_id
        self.supersede_poll_interval = float(supersede_poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **kwargs,
                "model_name": self.model_name,
                "version": self.version,
                "mlflow_conn_id": self.mlflow_conn_id,
                "supersede_poll_interval": self.supersede_poll_interval,
            },
        )

    def _superseded_by(self) -> dict[str, Any] | None:
        """Runs in a worker thread (MLflow's client and the connection lookup block)."""
        from airflow_mlops.core.approval import read_superseded_by
        from airflow_mlops.hooks.mlflow import MlflowHook

        with MlflowHook(mlflow_conn_id=self.mlflow_conn_id).client() as client:
            return read_superseded_by(client, self.model_name, self.version)

    async def _check_superseded(self) -> TriggerEvent | None:
        from asgiref.sync import sync_to_async

        try:
            found = await sync_to_async(self._superseded_by, thread_sensitive=False)()
        except Exception as err:  # checked again by the promote task; keep waiting
            self.log.warning("Could not read the supersede tag: %s: %s", type(err).__name__, err)
            return None
        if found is None:
            return None
        self.log.info(
            "%s version %s was superseded by version %s",
            self.model_name,
            self.version,
            found.get("version"),
        )
        return TriggerEvent({"superseded_by": found})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        next_registry_read = 0.0
        while True:
            if self.timeout_datetime and self.timeout_datetime < utcnow():
                yield await self._handle_timeout()
                return
            event = await self._handle_response()
            if event:
                yield event
                return
            if time.monotonic() >= next_registry_read:
                event = await self._check_superseded()
                if event:
                    yield event
                    return
                next_registry_read = time.monotonic() + self.supersede_poll_interval
            await asyncio.sleep(self.poke_interval)
