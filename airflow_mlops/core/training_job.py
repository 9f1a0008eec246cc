"""One training task's settings: :class:`TrainingJob` and its :class:`SplitPolicy`.

A job is the :class:`~airflow_mlops.core.training_config.TrainingConfig` plus what one run
needs besides (the data URI, target, experiment, labels and the deployment's limits). It has
its own import-light module (pydantic only) because every stage of training takes it: data
preparation (:mod:`~airflow_mlops.core.training_data`), estimators
(:mod:`~airflow_mlops.core.estimators`), MLflow logging
(:mod:`~airflow_mlops.core.training_logging`) and the workflow
(:mod:`~airflow_mlops.core.training`), and the operator validates its arguments with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from airflow_mlops.core.data_window import DataWindow
from airflow_mlops.core.training_config import TrainingConfig, build

__all__ = ["SplitPolicy", "TrainingJob"]


class TrainingJob(TrainingConfig):
    """One training task: the :class:`TrainingConfig` (same fields, same defaults) plus the
    data it reads, the labels of its run and the deployment's limits. Built with
    :meth:`from_values` for errors that name the field; every value is checked at construction.

    ``estimator``: dotted path to a class or factory (``xgboost.XGBClassifier``,
    ``my_pkg.models.build``), or the class/callable itself; ``None`` picks a RandomForest
    model for the task. Classes get ``params`` as constructor arguments; factories are called
    without arguments and ``params`` are applied with ``set_params``. ``preprocessing``:
    ``"default"`` (median impute numerics, most-frequent impute + one-hot categoricals),
    ``None``/``"none"`` (the estimator gets the raw columns), or a dotted path / callable
    ``f(X: DataFrame) -> transformer``.

    ``train_uri`` names a file, a folder or prefix (Hive partitions included) or a glob;
    ``window`` picks the partitions (and caps the rows) read, ``window_end`` is the newest
    partition or time it may include (default: the newest there is); ``key`` names the
    columns whose hash puts a row in training or holdout (default: the model's feature and
    target columns).
    """

    train_uri: str = Field(pattern=r"\S")
    window: DataWindow = Field(default_factory=DataWindow)
    window_end: str | None = None
    key: list[str] | None = Field(None, min_length=1)
    target: str = Field(pattern=r"\S")
    experiment_name: str = Field(pattern=r"\S")  # type: ignore[assignment]
    model_name: str | None = None
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    # Kept in the holdout file though never features: fairness measures over them.
    holdout_columns: list[str] = Field(default_factory=list)
    artifacts_uri: str | None = None
    reference_max_rows: int = Field(100_000, ge=1)
    max_one_hot_categories: int = Field(50, ge=1)
    serialization_format: Literal["cloudpickle", "skops", "pickle"] = "cloudpickle"
    input_example_rows: int = Field(5, ge=1)
    extra_tags: dict[str, str] = Field(default_factory=dict)
    #: More modules dotted paths may name, from ``[mlops] allowed_estimator_modules``.
    allowed_modules: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _empty_end_is_none(cls, values: Any) -> Any:
        # A template that renders to "" or "None" (no triggering partition: an absent XCom or
        # conf value) means "the newest".
        if isinstance(values, Mapping) and values.get("window_end") in ("", "None"):
            return {**values, "window_end": None}
        return values

    @model_validator(mode="after")
    def _target_is_no_feature(self) -> TrainingJob:
        if self.features is not None and self.target in self.features:
            raise ValueError(f"features must not contain the target column {self.target!r}")
        return self

    @classmethod
    def from_values(cls, values: Mapping[str, Any], label: str = "training job") -> TrainingJob:
        return build(cls, values, label)

    @property
    def split(self) -> SplitPolicy:
        return SplitPolicy(
            self.holdout_fraction, self.seed, self.time_column, tuple(self.key or ()) or None
        )

    def fingerprint(self) -> dict[str, Any]:
        """JSON-safe description of the configuration (for ``mlops.config_hash``); the run's
        labels (``extra_tags``) and the deployment's ``allowed_modules`` are not part of it."""
        return self.model_dump(mode="json", exclude={"extra_tags", "allowed_modules"})


@dataclass(frozen=True)
class SplitPolicy:
    """How the holdout is cut (the split fields of :class:`TrainingConfig`, plus ``data.key``).

    Hash split (:mod:`airflow_mlops.core.stable_split`): a row is held out when the hash of
    its ``key`` columns (default: the model's feature and target columns) mixed with
    ``seed`` falls in the lowest ``holdout_fraction`` of the range, so about that share is
    held out and a row keeps its side in every run with the same settings. Out-of-time
    split: with ``time_column``, the latest ``holdout_fraction`` of rows by time are held out
    and every training row is strictly earlier than every holdout row; the time column is
    not a feature unless listed in ``features``.
    """

    holdout_fraction: float
    seed: int
    time_column: str | None
    key: tuple[str, ...] | None = None
