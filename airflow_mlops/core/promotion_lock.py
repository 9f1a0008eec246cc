"""The per-model promotion lock, held in the MLflow registry itself.

MLflow has no conditional alias update and no transaction. The only atomic "create if
absent" it offers is creating a registered model (its name is a unique key, a second create
fails with ``RESOURCE_ALREADY_EXISTS``). So the lock is a registered model named
``<model>.mlops-lock`` carrying tags ``mlops.lock.owner`` (a random id) and
``mlops.lock.expires_at``. Acquire = create it; release = delete it (only if we still own
it). A lock whose holder died expires after ``ttl_seconds`` and may be broken by the next
promoter once ``clock_skew_seconds`` more has passed on its own clock. Before each alias write
the holder re-reads the lock to confirm it still owns it with time to spare (measured on its
monotonic clock too). A lock carrying this acquisition's own owner id is ours (a replayed create).
Names that would exceed ``VARCHAR(256)`` are shortened with a digest (:func:`lock_name`).

The alias moves that take it are in :mod:`airflow_mlops.core.alias_moves`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.errors import ConfigError, PromotionError

__all__ = [
    "DEFAULT_LOCK_CLOCK_SKEW_SECONDS",
    "LOCK_NAME_MAX_CHARS",
    "LOCK_SUFFIX",
    "TAG_LOCK_EXPIRES_AT",
    "TAG_LOCK_HOLDER",
    "TAG_LOCK_KEY",
    "TAG_LOCK_OWNER",
    "TAG_LOCK_TRY",
    "LockState",
    "PromotionLock",
    "lock_name",
]

log = logging.getLogger(__name__)

TAG_LOCK_OWNER = "mlops.lock.owner"
TAG_LOCK_EXPIRES_AT = "mlops.lock.expires_at"
TAG_LOCK_HOLDER = "mlops.lock.holder"
TAG_LOCK_KEY = "mlops.lock.idempotency_key"
TAG_LOCK_TRY = "mlops.lock.try_number"
LOCK_SUFFIX = ".mlops-lock"
# Registered-model names are VARCHAR(256) in MLflow's SQL stores, and a model name may
# already use all 256: longer lock names are shortened with a digest of the full name.
LOCK_NAME_MAX_CHARS = 256
# Waiters on different hosts compare the holder's expiry with their own clock: a lock
# counts as expired only this long after its recorded expiry (see PromotionLock).
DEFAULT_LOCK_CLOCK_SKEW_SECONDS = 60.0


# The locks this thread of control holds, by lock name: a move made while its model's lock
# is held (``with`` an outer lock) re-enters it instead of taking it again.
_HELD: ContextVar[Mapping[str, PromotionLock]] = ContextVar("airflow_mlops_held_locks")


def lock_name(model_name: str) -> str:
    """The lock's registered-model name: ``<model>.mlops-lock``, at most 256 characters.

    A name that would not fit keeps a prefix of the model name and replaces the rest with a
    SHA-256 digest of the full name, so the same model always maps to the same lock and two
    long names sharing a prefix do not share a lock.
    """
    name = f"{model_name}{LOCK_SUFFIX}"
    if len(name) <= LOCK_NAME_MAX_CHARS:
        return name
    digest = "~" + hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:32]
    keep = LOCK_NAME_MAX_CHARS - len(digest) - len(LOCK_SUFFIX)
    return f"{model_name[:keep]}{digest}{LOCK_SUFFIX}"


@dataclass(frozen=True)
class LockState:
    owner: str
    expires_at: float
    holder: str
    key: str = ""
    try_number: int | None = None


class PromotionLock:
    """A per-model mutual-exclusion lock held in the registry itself (see module docstring).

    :param holder: human-readable description of who holds it (host, pid, Airflow task).
    :param ttl_seconds: the lock expires this long after it is taken; a longer critical section
        is refused at :meth:`verify` rather than risking two writers.
    :param wait_seconds: give up (``PromotionError``) after waiting this long for another holder.
    :param reclaim_key: idempotency key of the task instance taking the lock, and
    :param try_number: its Airflow try number. A lock left by an *earlier* try of the same
        task instance (same key, lower try number) is taken over at once instead of waiting
        for its TTL: Airflow never runs two tries of one task instance together, so that
        holder is dead. A lock of the same try number (two scripts sharing the default
        ``RunContext``) or without a recorded try number is waited for like any other.
    :param clock_skew_seconds: how far apart the clocks of two promoters may be. Another holder's
        lock is broken only ``clock_skew_seconds`` after its recorded expiry (waiter's clock); the
        holder itself measures its remaining time on its own monotonic clock. Two writers
        can overlap only if clocks differ by more than ``clock_skew_seconds`` + the 30 s margin
        of :meth:`verify`.

    A lock found already holding *this* acquisition's owner id is ours: the MLflow client
    retries a create whose response was lost, and the replay finds the lock it made.

    **Re-entry.** Entering (``with``) a lock of a model whose lock this thread of control
    already holds through ``with``, on the same client, re-enters it: no registry write, the
    outer lock's ownership and expiry, and the inner exit releases nothing. So several moves
    of one model (``@challenger`` then ``@champion``) can share one lock cycle; each still
    calls :meth:`verify` before it writes.
    """

    def __init__(
        self,
        client: MlflowClient,
        model_name: str,
        *,
        holder: str = "",
        ttl_seconds: float = 900.0,
        wait_seconds: float = 1800.0,
        poll_seconds: float = 0.5,
        reclaim_key: str | None = None,
        try_number: int | None = None,
        clock_skew_seconds: float = DEFAULT_LOCK_CLOCK_SKEW_SECONDS,
    ) -> None:
        if ttl_seconds <= 0 or wait_seconds < 0 or poll_seconds <= 0 or clock_skew_seconds < 0:
            raise ConfigError(
                "lock ttl_seconds and poll_seconds must be > 0, wait_seconds and "
                f"clock_skew_seconds >= 0; got ttl_seconds={ttl_seconds!r}, "
                f"wait_seconds={wait_seconds!r}, poll_seconds={poll_seconds!r}, "
                f"clock_skew_seconds={clock_skew_seconds!r}"
            )
        self.client = client
        self.model_name = model_name
        self.name = lock_name(model_name)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.ttl_seconds = ttl_seconds
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.reclaim_key = reclaim_key
        self.try_number = try_number
        self.clock_skew_seconds = clock_skew_seconds
        self.owner: str | None = None
        self.expires_at = 0.0
        self._deadline = 0.0  # monotonic: the holder's own view of its expiry, skew-free
        self._reentered = False
        self._held_token: Token | None = None

    def __enter__(self) -> PromotionLock:
        held = _HELD.get({})
        outer = held.get(self.name)
        if outer is not None and outer.owner is not None and outer.client is self.client:
            self.owner, self.expires_at, self._deadline = (
                outer.owner,
                outer.expires_at,
                outer._deadline,
            )
            self._reentered = True
            log.debug("Re-entered promotion lock %s (owner %s).", self.name, self.owner)
            return self
        self.acquire()
        self._held_token = _HELD.set({**held, self.name: self})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reentered:  # the outer holder releases it
            self.owner, self._reentered = None, False
            return
        try:
            self.release()
        finally:
            if self._held_token is not None:
                _HELD.reset(self._held_token)
                self._held_token = None

    def read(self) -> LockState | None:
        """The lock as stored now, or None when nobody holds it."""
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        tags = model.tags or {}
        try:
            expires_at = float(tags.get(TAG_LOCK_EXPIRES_AT, "0"))
        except ValueError:
            expires_at = 0.0  # unreadable: treat as expired
        try:
            try_number: int | None = int(tags[TAG_LOCK_TRY])
        except (KeyError, ValueError):
            try_number = None  # absent or unreadable: never reclaimed, only expired
        return LockState(
            tags.get(TAG_LOCK_OWNER, ""),
            expires_at,
            tags.get(TAG_LOCK_HOLDER, ""),
            tags.get(TAG_LOCK_KEY, ""),
            try_number,
        )

    def _left_by_an_earlier_try(self, state: LockState) -> bool:
        return (
            bool(self.reclaim_key)
            and state.key == self.reclaim_key
            and self.try_number is not None
            and state.try_number is not None
            and state.try_number < self.try_number
        )

    def _identity_tags(self) -> dict[str, str]:
        if not self.reclaim_key or self.try_number is None:
            return {}
        return {TAG_LOCK_KEY: self.reclaim_key, TAG_LOCK_TRY: str(self.try_number)}

    def acquire(self) -> None:
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_seconds
        waited_for: LockState | None = None
        while True:
            # Measured before the request: the lock cannot have been created earlier.
            deadline_mono = time.monotonic() + self.ttl_seconds
            expires_at = time.time() + self.ttl_seconds
            try:
                self.client.create_registered_model(
                    self.name,
                    tags={
                        TAG_LOCK_OWNER: owner,
                        TAG_LOCK_EXPIRES_AT: f"{expires_at:.3f}",
                        TAG_LOCK_HOLDER: self.holder[:1000],
                        **self._identity_tags(),
                    },
                    description=(
                        f"Promotion lock of registered model {self.model_name!r}, held by "
                        f"{self.holder[:500]}. Managed by airflow-mlops: it disappears when the "
                        "promotion ends and expires by itself; delete it by hand only if its "
                        "holder is dead."
                    ),
                )
                self._acquired(owner, expires_at, deadline_mono)
                return
            except MlflowException as err:
                # RESOURCE_DOES_NOT_EXIST: the server looked the name up while its holder was
                # deleting it (release racing with this create); the lock is free: try again.
                if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            state = self.read()
            if state is not None and state.owner == owner:
                # Our own create, replayed by the client after a lost response.
                self._acquired(owner, state.expires_at, deadline_mono)
                return
            if state is not None and self._expired(state):
                self._break(state)
                continue
            if state is not None and self._left_by_an_earlier_try(state):
                log.warning(
                    "Promotion lock %s was left by try %s of this task instance (%s), which "
                    "is dead (this is try %s): taking it over.",
                    self.name,
                    state.try_number,
                    state.holder,
                    self.try_number,
                )
                self._break(state, why="left by an earlier try")
                continue
            if state is not None:
                waited_for = state
            if time.monotonic() >= deadline:
                who = (
                    f"{waited_for.holder} until {_iso(waited_for.expires_at)}"
                    if waited_for
                    else "?"
                )
                raise PromotionError(
                    f"could not take the promotion lock {self.name!r} within "
                    f"{self.wait_seconds:.0f}s: held by {who}. The registry was not changed."
                )
            time.sleep(self.poll_seconds * (1.0 + random.random()))

    def _acquired(self, owner: str, expires_at: float, deadline_mono: float) -> None:
        self.owner, self.expires_at, self._deadline = owner, expires_at, deadline_mono
        log.info("Acquired promotion lock %s (owner %s).", self.name, owner)

    def _expired(self, state: LockState) -> bool:
        """Expired by the waiter's clock, allowing for ``clock_skew_seconds`` between the hosts."""
        return state.expires_at + self.clock_skew_seconds < time.time()

    def _break(self, stale: LockState, why: str = "expired") -> None:
        """Delete a dead holder's lock, but only if it is still that same lock."""
        current = self.read()
        if current is None or current.owner != stale.owner:
            return
        log.warning(
            "Breaking promotion lock %s held by %s (%s; expires %s).",
            self.name,
            stale.holder,
            why,
            _iso(stale.expires_at),
        )
        self._delete()

    def verify(self, margin_seconds: float = 30.0) -> None:
        """Raise unless we still own the lock with ``margin_seconds`` to spare.

        Call it before each write under the lock."""
        state = self.read()
        if state is None or self.owner is None or state.owner != self.owner:
            raise PromotionError(
                f"lost the promotion lock {self.name!r} (it expired and was taken over); the "
                "alias was not changed. Raise the lock TTL if promotions take this long."
            )
        remaining = min(state.expires_at - time.time(), self._deadline - time.monotonic())
        if remaining < margin_seconds:
            raise PromotionError(
                f"the promotion lock {self.name!r} expires in less than {margin_seconds:.0f}s; the "
                "alias was not changed. Raise the lock TTL."
            )

    def release(self) -> None:
        if self.owner is None:
            return
        state = self.read()
        if state is not None and state.owner == self.owner:
            self._delete()
            log.info("Released promotion lock %s.", self.name)
        else:
            log.warning("Promotion lock %s was no longer ours at release.", self.name)
        self.owner = None

    def _delete(self) -> None:
        try:
            self.client.delete_registered_model(self.name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
