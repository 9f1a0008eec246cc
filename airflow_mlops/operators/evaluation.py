"""EvaluateModelOperator: challenger vs champion on the same holdout, judged by a policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.governance_spec import (
    ExplainSpec,
    FairnessSpec,
    parse_explain,
    parse_fairness,
)
from airflow_mlops.core.policy import (
    DEFAULT_MIN_ROWS,
    EVALUATION_ON,
    PromotionPolicy,
    default_policy,
    parse_policy,
)
from airflow_mlops.core.values import is_templated
from airflow_mlops.hooks.signing import model_trust
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Context


__all__ = ["EvaluateModelOperator", "as_slices"]


def as_slices(value: Any) -> dict[str, list[Any]] | None:
    """``{column: [values]}`` or None; JSON text is accepted (rendered params)."""
    if value is None or value == "" or value == {}:
        return None
    slices = as_mapping(value, "slices")
    for column, values in slices.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ConfigError(f"slices[{column!r}] must be a list of values, got {values!r}")
    return {str(k): list(v) for k, v in slices.items()}


class EvaluateModelOperator(MlopsBaseOperator):
    """Score the challenger and the current champion on rows neither trained on and decide.

    The challenger is the training task's result (``TrainModelOperator``'s XCom, at least
    ``run_id``); its run's tags give the logged model, the holdout URI and sha256, the
    target and the task. The holdout is re-read and must still have the recorded hash. The
    champion is ``models:/<model_name>@<champion_alias>`` resolved to its version; with no
    champion the challenger is judged as the first model. Both load from the registry by
    ``models:/`` URIs only and are scored with the same metric code as training, overall
    and per slice, on the holdout rows the champion did not train on (worked out from its
    recorded manifest and split; see :mod:`airflow_mlops.core.comparison`). The
    :class:`~airflow_mlops.core.policy.PromotionPolicy` then decides; with fewer than
    ``min_rows`` comparable rows the decision is "not promoted: insufficient evidence".
    See ``docs/operators/evaluation-and-promotion.md`` for the policy semantics.

    The decision record is logged as the artifact ``decision_artifact`` on the challenger's
    run (tags ``mlops.decision.*`` summarise it) and returned (XCom): the record plus
    ``decision_artifact_uri``. The task succeeds whether or not the challenger qualifies:
    read ``promote`` and ``reason``.

    :param training_result: the training task's result (templated; e.g. ``train.output``).
    :param policy: promotion policy, a mapping / JSON text / ``PromotionPolicy`` (templated);
        default: at least as good as the champion on f1 / rmse, for the trained task.
    :param model_name: registered model name (templated); default: the name training tagged.
    :param slices: ``{column: [values, ...]}`` for per-slice metrics and no-regression
        checks (templated).
    :param champion_alias: alias of the model in production (templated), default ``champion``.
    :param decision_artifact: artifact path of the record on the run (templated).
    :param evaluation_on: ``holdout`` (default: the challenger's holdout minus the rows the
        champion trained on) or ``newest`` (only partitions after the champion's window).
    :param min_rows: fewest comparable rows for a decision (default 50).
    :param fairness: the fairness gate, ``evaluation.fairness`` (a mapping or
        ``FairnessSpec``): sensitive columns, metrics and bounds, measured on the same rows;
        a broken bound refuses the challenger. The per-group table is logged as
        ``mlops/fairness.json`` on the challenger's run.
    :param explain: permutation importance of the challenger on a sample of the same rows,
        logged as ``mlops/explanations.json`` (a mapping / ``ExplainSpec``; ``False`` turns
        it off). Default on, 2,000 rows.
    :param training_drift: compare the challenger's training data (its drift reference,
        ``mlops.reference.uri``) with the champion's using the drift check's machinery on a
        5,000-row sample per side; logged as ``mlops/training_drift.json`` and shown in the
        model card (default True; it informs, never gates).
    :param trust_unsigned_models: load models this provider did not train and sign
        (default False: the challenger or champion is refused with ``UntrustedModelError``
        before it is unpickled; see ``docs/security.md``).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "training_result",
        "policy",
        "model_name",
        "slices",
        "champion_alias",
        "decision_artifact",
        "evaluation_on",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#e6dff5"

    def __init__(
        self,
        *,
        training_result: Any,
        policy: PromotionPolicy | Mapping[str, Any] | str | None = None,
        model_name: str | None = None,
        slices: Mapping[str, Sequence[Any]] | str | None = None,
        champion_alias: str = "champion",
        decision_artifact: str = "mlops/decision.json",
        evaluation_on: str = "holdout",
        min_rows: int = DEFAULT_MIN_ROWS,
        trust_unsigned_models: bool = False,
        fairness: FairnessSpec | Mapping[str, Any] | None = None,
        explain: ExplainSpec | Mapping[str, Any] | bool = True,
        training_drift: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not is_templated(evaluation_on) and evaluation_on not in EVALUATION_ON:
            raise ConfigError(
                f"evaluation_on must be one of {list(EVALUATION_ON)}, got {evaluation_on!r}"
            )
        if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
            raise ConfigError(f"min_rows must be a positive integer, got {min_rows!r}")
        if isinstance(policy, PromotionPolicy):
            policy = policy.model_dump(mode="json")
        elif policy is not None and not is_templated(policy):
            parse_policy(policy)  # a broken policy fails when the DAG is parsed, not at run time
        self.training_result = training_result
        self.policy = policy
        self.model_name = model_name
        self.slices = slices
        self.champion_alias = champion_alias
        self.decision_artifact = decision_artifact
        self.evaluation_on = evaluation_on
        self.min_rows = min_rows
        self.trust_unsigned_models = trust_unsigned_models
        # Checked now, so a broken section fails when the DAG is parsed; kept as JSON.
        spec = parse_fairness(fairness)
        self.fairness = None if spec is None else spec.model_dump(mode="json")
        self.explain = parse_explain(explain).model_dump(mode="json")
        if not isinstance(training_drift, bool):
            raise ConfigError(f"training_drift must be true or false, got {training_drift!r}")
        self.training_drift = training_drift

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import evaluation as ev

        training_result = as_mapping(self.training_result, "training_result")
        # No policy: the default of the task the challenger was trained for.
        policy = parse_policy(self.policy) if self.policy else None
        slices = as_slices(self.slices)
        hook = self.mlflow_hook
        trust = model_trust(self.trust_unsigned_models is True)
        with hook.session() as client:
            challenger = ev.challenger_from_training(client, training_result)
            policy = policy or default_policy(challenger.task)
            model_name = self.model_name or challenger.model_name
            if not model_name:
                raise ConfigError(
                    f"{self.task_id}: model_name is not set and training run "
                    f"{challenger.run_id} has no mlops.model_name tag"
                )
            evaluation = ev.evaluate_challenger(
                client,
                self.storage,
                challenger,
                model_name=model_name,
                policy=policy,
                slices=slices,
                champion_alias=self.champion_alias,
                trust=trust,
                on=self.evaluation_on,
                min_rows=self.min_rows,
                fairness=self.fairness,
                explain=self.explain,
                training_drift=self.training_drift,
            )
            record = ev.log_artifacts(client, challenger.run_id, evaluation)
            artifact_uri = ev.log_record(client, challenger.run_id, record, self.decision_artifact)
            ev.tag_decision(client, challenger.run_id, record)
            experiment_id = client.get_run(challenger.run_id).info.experiment_id
        champion = record["champion"]
        self.log.info(
            "Challenger %s vs %s: %s",
            challenger.model_uri,
            f"champion v{champion['version']}" if champion else "no champion",
            record["reason"],
        )
        self.log.info(
            "Rows compared %s, excluded %s (%s).",
            record["rows_compared"],
            record["rows_excluded"],
            record["comparison"]["explanation"],
        )
        for failed in (record.get("fairness") or {}).get("failed", []):
            self.log.warning("Fairness: %s", failed)
        top = (record.get("explanations") or {}).get("top_features")
        if top:
            self.log.info("Top features: %s", ", ".join(f["feature"] for f in top))
        drift = record.get("training_drift") or {}
        if drift:
            self.log.info(
                "Training data vs the champion's: %s (%s drifted)",
                drift.get("status"),
                drift.get("drifted_columns"),
            )
        self.log.info("Decision record: %s", artifact_uri)
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=experiment_id,
            run_id=challenger.run_id,
            model_name=model_name if champion else None,
            model_version=champion["version"] if champion else None,
        )
        return ev.xcom_summary(record, artifact_uri)
