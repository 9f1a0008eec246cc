"""Batched segments: one task trains, gates and promotes a chunk of segment models.

A pipeline with ``segments.batch_size`` (or more segments than a per-segment chain allows)
runs :func:`run_segment_batch` once per chunk instead of one mapped chain of tasks per
segment: 1,000 segments in chunks of 50 are 20 tasks, not 7,000. Each segment still goes
through the steps of the single-model chain, with the same core functions:

``detect_changes`` (:mod:`~airflow_mlops.core.changes`) → ``validate`` (when the pipeline has
a suite; :func:`~airflow_mlops.core.validation.validate_frame`) → ``train``
(:func:`~airflow_mlops.core.training.train_model`) → ``evaluate``
(:func:`~airflow_mlops.core.evaluation.evaluate_challenger`) → ``register``
(:func:`~airflow_mlops.core.registry.register_version`, ``@challenger``) → ``promote``
(:func:`~airflow_mlops.core.promotion.promote_challenger`: gate, serving check,
compare-and-set under the promotion lock).

**Failure isolation.** A segment whose step raises is recorded (step, masked error) and
the chunk goes on with the next segment; its later steps are ``upstream_failed``, as in a
chain. The per-segment outcome and reason come from
:func:`~airflow_mlops.core.summary.summarize_run`, the same rules as a chain's summary.
The caller fails the task when any segment failed (:class:`SegmentBatchFailed`), after the
results are stored, so nothing ends green-and-silent.

**Retry safety.** Each segment has its own :class:`~airflow_mlops.core.lineage.RunContext`
(the task id plus ``[<segment>]``), so its idempotency key differs from the other segments'
and is the same on every try of the chunk: a retried chunk reuses each finished training run
and registered version, and promotion reads ``@champion`` back (``already_champion``).

**XCom stays small.** Segment specs travel in a JSON manifest in storage
(:func:`~airflow_mlops.core.segments.write_manifest`); a chunk's results go to a JSON file;
the XCom carries URIs and counts (:func:`~airflow_mlops.core.segments.chunk_xcom`), a few
hundred bytes whatever the segment count.

No Airflow import; heavy libraries are imported by the functions that use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import DataValidationFailed, MlopsError
from airflow_mlops.core.segments import SegmentSpec
from airflow_mlops.core.storage import join_uri

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.promotion import PromotionOptions, TrustProvider
    from airflow_mlops.core.registry import Champion
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.core.suite import SuiteDefinition
    from airflow_mlops.core.training_job import TrainingJob

__all__ = [
    "SEGMENT_STEPS",
    "BatchSettings",
    "SegmentBatchFailed",
    "run_segment",
    "run_segment_batch",
    "segment_context",
]

log = logging.getLogger(__name__)
_GX_LOCK = threading.Lock()

SEGMENT_STEPS = ("detect_changes", "validate", "train", "evaluate", "register", "promote")


class SegmentBatchFailed(MlopsError):
    """One or more segments of a chunk failed; the others finished (see the results file)."""


class _Skipped(Exception):
    """A step decided the segment stops here without failing (no change, ``on_failure: skip``)."""

    def __init__(self, reason: str, result: Any = None) -> None:
        super().__init__(reason)
        self.result = result


def segment_context(context: RunContext, segment: str) -> RunContext:
    """The segment's own identity: its idempotency key differs from every other segment's and
    stays the same on every try of its chunk."""
    return dataclasses.replace(context, task_id=f"{context.task_id}[{segment}]")


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """What every segment of a chunk shares: the pipeline's settings and the run's."""

    job: TrainingJob  # ``train_uri``/``model_name`` are replaced per segment
    trust: TrustProvider
    promotion: PromotionOptions
    policy: Mapping[str, Any] | None = None  # None: the task's default policy
    slices: Mapping[str, Sequence[Any]] | None = None
    evaluation_on: str = "holdout"
    min_rows: int | None = None
    suite: SuiteDefinition | None = None
    on_failure: str = "fail"
    run_type: str = "manual"
    config_hash: str = ""
    code_version: str | None = None
    experiment_id: str | None = None
    signing_key: bytes | None = None
    source_dir: str | None = None
    artifacts_prefix: str | None = None  # per-segment training artifacts go below it
    report_prefix: str | None = None  # per-segment validation reports go below it
    challenger_alias: str = "challenger"
    ready_timeout_seconds: float = 300.0
    lock_options: Mapping[str, Any] | None = None
    record_last_ct: bool = True
    mask: Callable[[str], str] = field(default=str)
    #: Segments of a chunk run at once (threads): their MLflow requests and serving checks
    #: overlap; Great Expectations validations still run one at a time.
    workers: int = 1


# -- one segment ------------------------------------------------------------------------------


class _Steps:
    """Runs a segment's steps in order; the first failure or skip stops the rest."""

    def __init__(self, mask: Callable[[str], str]) -> None:
        self.mask = mask
        self.states: dict[str, str] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.stopped: str | None = None  # "failed" or "skipped"

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.stopped is not None:
            self.states[name] = "upstream_failed" if self.stopped == "failed" else "skipped"
            return None
        from airflow_mlops.core.summary import cap_error, describe_error

        started = time.perf_counter()
        try:
            value = fn()
        except _Skipped as skip:
            self.states[name], self.stopped = "skipped", "skipped"
            self.results[name] = skip.result
            return None
        except Exception as err:  # one segment's failure is recorded, never raised
            log.warning("segment step %s failed: %s", name, err, exc_info=True)
            self.states[name], self.stopped = "failed", "failed"
            self.errors[name] = {"error": cap_error(self.mask(describe_error(err)))}
            if isinstance(err, DataValidationFailed):
                self.results[name] = err.summary  # the failed expectations, for the reason
            return None
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
        self.states[name] = "success"
        self.results[name] = value
        return value


def run_segment(
    spec: SegmentSpec,
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    storage: Storage,
    filesystem: AbstractFileSystem,
    *,
    window_end: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run the single-model chain's steps for one segment; never raises for the segment's
    own failures. Returns its record: ``{segment, model_name, outcome, reason, failed,
    champion_version, challenger_version, promoted, steps, errors, seconds, ...}``."""
    from airflow_mlops.core.summary import summarize_run

    started = time.perf_counter()
    own = segment_context(context, spec.segment)
    steps = _Steps(settings.mask)
    seen: dict[str, Any] = {}  # the champion detect_changes read, for the evaluation
    steps.run(
        "detect_changes",
        lambda: _detect_changes(spec, settings, client, filesystem, window_end, seen),
    )
    if settings.suite is not None:
        steps.run(
            "validate",
            lambda: _validate(spec, settings, storage, filesystem, window_end),
        )
    training = steps.run(
        "train",
        lambda: _train(spec, settings, own, client, storage, filesystem, window_end, should_stop),
    )
    evaluation = steps.run(
        "evaluate",
        lambda: _evaluate(spec, settings, client, storage, training, seen.get("champion")),
    )
    # One promotion-lock cycle for both alias moves (they re-enter it): taken by register,
    # released by promote, or by register itself when it fails.
    lock = contextlib.ExitStack()
    with lock:
        registration = steps.run(
            "register", lambda: _register(spec, settings, own, client, evaluation, lock)
        )
        steps.run(
            "promote",
            lambda: _promote(
                settings,
                own,
                client,
                storage,
                evaluation,
                registration,
                steps.results.get("validate"),
                lock,
            ),
        )
    summary = summarize_run(spec.model_name, steps.states, steps.results, steps.errors).to_dict()
    promotion = steps.results.get("promote") or {}
    record = {
        "segment": spec.segment,
        "model_name": spec.model_name,
        "train_uri": spec.train_uri,
        "sha256": spec.sha256,
        "outcome": summary["outcome"],
        "reason": summary["reason"],
        "failed": any(s == "failed" for s in steps.states.values()),
        "promoted": bool(promotion.get("promoted")),
        "champion_version": summary["champion_version"],
        "challenger_version": summary["challenger_version"],
        "run_id": (training or {}).get("run_id"),
        "reused": bool((training or {}).get("reused")),
        "steps": steps.states,
        "errors": {k: v["error"] for k, v in steps.errors.items()},
        "seconds": {
            **steps.seconds,
            **_serving_seconds(promotion),
            "total": round(time.perf_counter() - started, 3),
        },
    }
    if settings.record_last_ct:
        _record_last_ct(client, own, summary, settings.mask)
    return record


def _serving_seconds(promotion: Mapping[str, Any]) -> dict[str, float]:
    """The serving check's own time (inside ``promote``), for the benchmark's profile."""
    check = promotion.get("serving_check") or {}
    return {"serving_check": check["seconds"]} if "seconds" in check else {}


def _detect_changes(
    spec: SegmentSpec,
    settings: BatchSettings,
    client: MlflowClient,
    fs: AbstractFileSystem,
    window_end: str | None,
    seen: dict[str, Any],
) -> dict[str, Any]:
    """The chain's ``detect_changes`` for one segment: only a scheduled run compares data.
    The champion it read goes in ``seen["champion"]``."""
    from airflow_mlops.core.changes import (
        ALWAYS_TRAIN_RUN_TYPES,
        compare_with_hash,
        compare_with_manifest,
        decide_retrain,
    )
    from airflow_mlops.core.lineage import TAG_DATA_SHA256
    from airflow_mlops.core.registry import resolve_champion

    champion = seen["champion"] = resolve_champion(client, spec.model_name)
    always = settings.run_type in ALWAYS_TRAIN_RUN_TYPES
    tags = None
    if champion is not None:
        # Only a scheduled run reads the champion's tags (a manual run trains anyway).
        tags = (
            dict(client.get_run(champion.run_id).data.tags)
            if champion.run_id and not always
            else {}
        )
    data = None
    if tags is not None and not always:
        from airflow_mlops.core.data_window import select_window
        from airflow_mlops.core.datasets import resolve_files

        files = select_window(
            resolve_files(fs, spec.train_uri), settings.job.window, end=window_end or None
        )
        from airflow_mlops.core.comparison import run_manifest

        manifest = run_manifest(client, champion.run_id if champion else None)
        data = (
            compare_with_manifest(manifest, files, fs)
            if manifest is not None
            else compare_with_hash(fs, files, tags.get(TAG_DATA_SHA256))
        )
    decision = decide_retrain(
        run_type=settings.run_type,
        config_hash=settings.config_hash,
        champion_tags=tags,
        data_changed=bool(data and data.changed),
        champion_version=champion.version if champion else None,
        code_version=settings.code_version,
    )
    result = {**decision.to_dict(), "data": data.summary() if data else None}
    if not decision.train:
        raise _Skipped(decision.reason, result)
    return result


def _validate(
    spec: SegmentSpec,
    settings: BatchSettings,
    storage: Storage,
    fs: AbstractFileSystem,
    window_end: str | None,
) -> dict[str, Any]:
    """The pipeline's suite on the segment's rows; ``on_failure`` as the validate task."""
    assert settings.suite is not None
    with _GX_LOCK:  # Great Expectations keeps process-wide state: one validation at a time
        return _validate_locked(spec, settings, storage, fs, window_end)


def _validate_locked(
    spec: SegmentSpec,
    settings: BatchSettings,
    storage: Storage,
    fs: AbstractFileSystem,
    window_end: str | None,
) -> dict[str, Any]:
    from airflow_mlops.core.data_window import read_window
    from airflow_mlops.core.manifest import build_manifest
    from airflow_mlops.core.segments import segment_folder
    from airflow_mlops.core.validation import validate_frame

    assert settings.suite is not None
    read = read_window(fs, spec.train_uri, settings.job.window, end=window_end or None)
    manifest = build_manifest(fs, read.files)
    report_uri = (
        join_uri(settings.report_prefix, segment_folder(spec.segment), "validation_result.json")
        if settings.report_prefix
        else None
    )
    outcome = validate_frame(
        read.frame,
        settings.suite,
        data_uri=spec.train_uri,
        data_sha256=manifest.files[0].sha256 if len(manifest.files) == 1 else None,
        report_uri=report_uri,
    )
    if report_uri:
        storage.write_text(report_uri, outcome.report_json())
    summary = {
        **outcome.summary,
        "manifest_hash": manifest.content_hash,
        "on_failure": settings.on_failure,
    }
    if outcome.success or settings.on_failure == "warn":
        return summary
    if settings.on_failure == "skip":
        raise _Skipped(outcome.failure_message(), summary)
    raise DataValidationFailed(outcome.failure_message(), summary)


def _train(
    spec: SegmentSpec,
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    storage: Storage,
    fs: AbstractFileSystem,
    window_end: str | None,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    from airflow_mlops.core.segments import segment_folder
    from airflow_mlops.core.training import train_model

    if settings.promotion.serving is not None:
        from airflow_mlops.core.serving import launch_serving_checker

        launch_serving_checker()  # a chunk's checker starts while its first model trains
    update: dict[str, Any] = {
        "train_uri": spec.train_uri,
        "model_name": spec.model_name,
        "window_end": window_end or None,
    }
    if settings.artifacts_prefix:
        update["artifacts_uri"] = join_uri(
            settings.artifacts_prefix, segment_folder(spec.segment), "training"
        )
    job = settings.job.model_copy(update=update)
    return train_model(
        job,
        context,
        storage,
        client,
        experiment_id=settings.experiment_id,
        source_dir=settings.source_dir,
        should_stop=should_stop,
        signing_key=settings.signing_key,
        filesystem=fs,
    ).to_dict()


def _evaluate(
    spec: SegmentSpec,
    settings: BatchSettings,
    client: MlflowClient,
    storage: Storage,
    training: Mapping[str, Any],
    champion: Champion | None,
) -> dict[str, Any]:
    """``champion``: the one detect_changes read seconds ago (no second read); promotion's
    compare-and-set re-checks it under the lock."""
    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core.policy import DEFAULT_MIN_ROWS, default_policy

    challenger = ev.challenger_from_training(client, training)
    evaluation = ev.evaluate_challenger(
        client,
        storage,
        challenger,
        model_name=spec.model_name,
        champion=champion,
        policy=settings.policy or default_policy(challenger.task),
        slices=settings.slices,
        trust=settings.trust(),
        on=settings.evaluation_on,
        min_rows=settings.min_rows or DEFAULT_MIN_ROWS,
    )
    uri = ev.log_record(client, challenger.run_id, evaluation.record, "mlops/decision.json")
    ev.tag_decision(client, challenger.run_id, evaluation.record)
    return ev.xcom_summary(evaluation.record, uri)


def _register(
    spec: SegmentSpec,
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    evaluation: Mapping[str, Any],
    lock: contextlib.ExitStack,
) -> dict[str, Any]:
    """Register once and point ``@challenger`` at it (what ``RegisterModelOperator`` does),
    taking the segment's promotion lock into ``lock`` for the promote step (released here
    if the move fails)."""
    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promotion_lock, set_challenger
    from airflow_mlops.core.registry import register_version

    challenger = evaluation["challenger"]
    registration = register_version(
        client,
        spec.model_name,
        challenger["model_uri"],
        context=context,
        run_id=challenger["run_id"],
        ready_timeout_seconds=settings.ready_timeout_seconds,
    )
    actor = Actor(reason=f"registered from training run {challenger['run_id']}", context=context)
    lock.enter_context(promotion_lock(client, spec.model_name, actor, settings.lock_options))
    move = None
    if settings.challenger_alias:
        try:
            move = set_challenger(
                client,
                spec.model_name,
                registration.version,
                actor,
                alias=settings.challenger_alias,
                lock_options=settings.lock_options,
            )
        except BaseException:
            lock.close()  # promote will not run: nobody else releases it
            raise
    return {
        **registration.to_dict(),
        "challenger_alias": settings.challenger_alias,
        "challenger_move": move.to_dict() if move else None,
    }


def _promote(
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    storage: Storage,
    evaluation: Mapping[str, Any],
    registration: Mapping[str, Any],
    validation: Mapping[str, Any] | None,
    lock: contextlib.ExitStack,
) -> dict[str, Any]:
    """Gate and move ``@champion`` in the lock register took; the lock is released here."""
    from airflow_mlops.core.promotion import promote_challenger

    options = settings.promotion
    if validation is not None:  # the segment's own validation, for its promotion record
        options = dataclasses.replace(options, validation=validation)
    with lock:
        return promote_challenger(
            client,
            storage,
            evaluation,
            registration,
            approval=None,  # batched mode refuses every approval but "auto" (factories/config.py)
            context=context,
            trust=settings.trust,
            options=options,
        ).result


def _record_last_ct(
    client: MlflowClient, context: RunContext, summary: Mapping[str, Any], mask: Callable
) -> None:
    """The model's ``mlops.last_ct`` tag for the MLOps page, as the chain's summary writes it.
    Never raises: the results file is the record, the tag a convenience."""
    if summary.get("outcome") == "skipped":
        return
    from datetime import datetime, timezone

    from airflow_mlops.core.model_status import TAG_LAST_CT, last_ct_tag

    try:
        value = last_ct_tag(
            summary,
            dag_id=context.dag_id,
            run_id=context.run_id,
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        client.set_registered_model_tag(summary["model_name"], TAG_LAST_CT, value)
    except Exception as err:  # e.g. no registered model: the segment failed before register
        log.info("%s: last CT outcome not recorded: %s", summary["model_name"], mask(str(err)))


# -- a chunk ----------------------------------------------------------------------------------


def run_segment_batch(
    specs: Sequence[SegmentSpec],
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    storage: Storage,
    filesystem_for: Callable[[str], AbstractFileSystem],
    *,
    window_end: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    earlier: Sequence[Mapping[str, Any]] = (),
    on_record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every segment of a chunk (one MLflow client, one storage, one serving checker);
    a segment's failure is in its record, never raised. Returns the records, in order.

    ``earlier``: the records an earlier try of this chunk stored. A segment whose earlier
    record finished without failure, for the same segment file (URI and sha256), is not run
    again: its record is kept (``earlier_try: true``). Re-running it would be safe (its run,
    version and alias move are found by its idempotency key) but would re-score the new
    champion against itself. ``on_record(records so far)`` is called after each segment, so
    a try killed mid-chunk leaves the records of the segments it finished.
    """
    checker: Any = contextlib.nullcontext()
    if len(specs) > 1 and settings.promotion.serving is not None:
        from airflow_mlops.core.serving import warm_serving_checker

        checker = warm_serving_checker()  # imports paid once; stopped when the chunk ends
    with checker:
        return _run_chunk(
            specs,
            settings,
            context,
            client,
            storage,
            filesystem_for,
            window_end,
            should_stop,
            earlier,
            on_record,
        )


def _run_chunk(
    specs: Sequence[SegmentSpec],
    settings: BatchSettings,
    context: RunContext,
    client: MlflowClient,
    storage: Storage,
    filesystem_for: Callable[[str], AbstractFileSystem],
    window_end: str | None,
    should_stop: Callable[[], bool] | None,
    earlier: Sequence[Mapping[str, Any]],
    on_record: Callable[[list[dict[str, Any]]], None] | None,
) -> list[dict[str, Any]]:
    from airflow_mlops.core.provenance import reusing_model_downloads
    from airflow_mlops.core.training import TrainingInterrupted

    done = {r.get("segment"): r for r in earlier if isinstance(r, Mapping) and not r.get("failed")}
    fs_by_scheme: dict[str, AbstractFileSystem] = {}
    kept: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, SegmentSpec, AbstractFileSystem]] = []
    for index, spec in enumerate(specs):
        previous = done.get(spec.segment)
        if previous is not None and _same_input(previous, spec):
            kept[index] = {**previous, "earlier_try": True}
            log.info("segment %s: kept the record of an earlier try", spec.segment)
            continue
        scheme = spec.train_uri.split("://", 1)[0] if "://" in spec.train_uri else "file"
        if scheme not in fs_by_scheme:
            fs_by_scheme[scheme] = filesystem_for(spec.train_uri)
        todo.append((index, spec, fs_by_scheme[scheme]))

    def one(spec: SegmentSpec, fs: AbstractFileSystem) -> dict[str, Any]:
        if should_stop is not None and should_stop():
            raise TrainingInterrupted(f"stopped before segment {spec.segment!r}")
        # Training signs, evaluation scores and the serving check loads the same model: it
        # is fetched from MLflow once per segment (each use still checks it under the trust).
        with reusing_model_downloads():
            record = run_segment(
                spec,
                settings,
                context,
                client,
                storage,
                fs,
                window_end=window_end,
                should_stop=should_stop,
            )
        log.info(
            "segment %s (%s): %s in %.2fs - %s",
            spec.segment,
            spec.model_name,
            record["outcome"],
            record["seconds"]["total"],
            record["reason"],
        )
        return record

    def finished(index: int, record: dict[str, Any]) -> None:
        kept[index] = record
        if on_record is not None:
            on_record([kept[i] for i in sorted(kept)])

    if settings.workers <= 1:
        for index, spec, fs in todo:
            finished(index, one(spec, fs))
        return [kept[i] for i in sorted(kept)]
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with (
        _native_threads_per_worker(settings.workers),
        ThreadPoolExecutor(settings.workers, thread_name_prefix="segment") as pool,
    ):
        futures = {pool.submit(one, spec, fs): index for index, spec, fs in todo}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    return [kept[i] for i in sorted(kept)]


def _native_threads_per_worker(workers: int) -> Any:
    """Limit BLAS/OpenMP pools to the cores' share of each segment worker.

    Every worker's fits and predictions would otherwise start a pool as large as the
    machine; on 2 cores, 2 workers x 2 spinning OpenMP threads measured about a third more
    CPU per model for the same work.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(max(1, (os.cpu_count() or 1) // workers))


def _same_input(record: Mapping[str, Any], spec: SegmentSpec) -> bool:
    return record.get("train_uri") == spec.train_uri and record.get("sha256") == spec.sha256
