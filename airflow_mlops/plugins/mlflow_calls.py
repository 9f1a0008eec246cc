"""Blocking work of the MLOps page, kept off the API server's event loop and shared pool.

The API server answers every route (the REST API, the Execution API the workers report to,
the UI) from one event loop plus AnyIO's shared thread pool (40 threads). If page handlers
ran MLflow calls there, one MLflow server that stops answering would let page requests hold
all of those threads for minutes (MLflow's HTTP client waits 120 s per request and retries
7 times with backoff), and Airflow's own routes would queue behind them. So the page's
async routes hand their blocking work to this module:

- :func:`call_mlflow` runs ``work(client)`` in ONE small executor dedicated to MLflow
  (``[mlops] page_mlflow_workers`` threads, default 4) that accepts at most twice that many
  calls queued or running; when it is full the call fails at once with :class:`MlflowBusy`
  (the route answers 503). The caller waits at most ``[mlops] page_mlflow_timeout_seconds``
  (default 10), then gets :class:`MlflowTimeout` (504). In these threads MLflow's HTTP client
  itself gives up after the same time with no retry, so a slot held by a dead server frees
  itself (see :func:`_limit_mlflow_http_in_this_thread`).
- :func:`call_blocking` does the same for reads of Airflow's metadata database, in a second
  executor of its own, so a stuck MLflow cannot starve them.
- :func:`cached` keeps a loaded value for ``[mlops] page_cache_seconds`` (default 15), serves
  it a little longer while one background load refreshes it, and lets concurrent misses of
  one key share one load (single flight).

Import-light: MLflow and Airflow are imported inside the worker threads, on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "CLIENT_TTL_SECONDS",
    "DB_PENDING",
    "DB_WORKERS",
    "DEFAULT_CACHE_SECONDS",
    "DEFAULT_CONN_ID",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_WORKERS",
    "OVERVIEW_THREADS",
    "PENDING_PER_WORKER",
    "STALE_FACTOR",
    "MlflowBusy",
    "MlflowTimeout",
    "cache_seconds",
    "cached",
    "call_blocking",
    "call_mlflow",
    "db_executor",
    "forget_cached",
    "mlflow_executor",
    "page_timeout",
    "reset",
    "thread_map",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = 4
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_CACHE_SECONDS = 15.0
DEFAULT_CONN_ID = "mlflow_default"
#: MLflow calls admitted per worker thread (running + queued) before answering "busy".
PENDING_PER_WORKER = 2
#: Threads reading Airflow's metadata database for the page, and the calls admitted (each
#: page view filters the cached overview for its user there, so the queue is longer).
DB_WORKERS = 4
DB_PENDING = 32
#: Threads one overview load may use to read its models in parallel.
OVERVIEW_THREADS = 4
#: An expired overview is still served (and refreshed in the background) for this many
#: times the cache duration, so most visits never wait for a full registry read.
STALE_FACTOR = 4
#: How long a resolved MLflow client (connection lookup included) is reused.
CLIENT_TTL_SECONDS = 60.0


class MlflowBusy(Exception):
    """Every slot of the page's executor is taken: answer 503 and let the user retry."""


class MlflowTimeout(Exception):
    """The page's call did not finish in time: answer 504."""


# -- settings -------------------------------------------------------------------------------


def _setting(key: str, default: float) -> float:
    """A positive number from ``[mlops] <key>``; the default when unset or unreadable."""
    try:
        from airflow.configuration import conf

        raw = conf.get("mlops", key, fallback=None)
    except Exception:  # no Airflow configuration (plain scripts, some tests)
        raw = None
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("[mlops] %s must be a number, got %r; using %s", key, raw, default)
        return default
    if not math.isfinite(value) or value <= 0:
        log.warning("[mlops] %s must be positive, got %r; using %s", key, raw, default)
        return default
    return value


def page_timeout() -> float:
    """``[mlops] page_mlflow_timeout_seconds``: seconds a page waits for one blocking call."""
    return _setting("page_mlflow_timeout_seconds", DEFAULT_TIMEOUT_SECONDS)


def cache_seconds() -> float:
    """``[mlops] page_cache_seconds``: how long the page reuses a loaded overview."""
    return _setting("page_cache_seconds", DEFAULT_CACHE_SECONDS)


def _conn_id() -> str:
    try:
        from airflow.configuration import conf

        return conf.get("mlops", "mlflow_conn_id", fallback=None) or DEFAULT_CONN_ID
    except Exception:
        return DEFAULT_CONN_ID


# -- bounded executors ----------------------------------------------------------------------


class _BoundedExecutor:
    """A thread pool that refuses work when ``capacity`` calls are already queued or running.

    A slot is freed when the work really ends, not when the caller stops waiting: a thread
    stuck on a dead server keeps its slot, which is what bounds the damage.
    """

    def __init__(self, name: str, workers: int, capacity: int | None = None) -> None:
        self.name = name
        self.workers = workers
        self.capacity = capacity or workers * PENDING_PER_WORKER
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._pending >= self.capacity:
                raise MlflowBusy(
                    f"{self.name}: {self._pending} calls already pending "
                    f"(capacity {self.capacity}); try again shortly."
                )
            self._pending += 1
        try:
            future = self._pool.submit(fn)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_executors: dict[str, _BoundedExecutor] = {}
_executors_lock = threading.Lock()


def _executor(name: str, workers: int, capacity: int | None = None) -> _BoundedExecutor:
    with _executors_lock:
        found = _executors.get(name)
        if found is None:
            found = _executors[name] = _BoundedExecutor(name, workers, capacity)
        return found


def mlflow_executor() -> _BoundedExecutor:
    """The executor dedicated to MLflow (created on first use, sized from the config)."""
    return _executor("mlops-page-mlflow", int(_setting("page_mlflow_workers", DEFAULT_WORKERS)))


def db_executor() -> _BoundedExecutor:
    """The executor for the page's reads of Airflow's metadata database."""
    return _executor("mlops-page-db", DB_WORKERS, DB_PENDING)


def forget_cached() -> None:
    """Drop cached and in-flight loads, so the next visit reads the registry afresh."""
    _cache.clear()
    _inflight.clear()


def reset() -> None:
    """Drop executors, clients and cache (tests; a reconfigured process)."""
    with _executors_lock:
        for executor in _executors.values():
            executor.shutdown()
        _executors.clear()
    with _client_lock:
        _clients.clear()
    forget_cached()


async def _run(executor: _BoundedExecutor, fn: Callable[[], T], timeout: float | None) -> T:
    future = executor.submit(fn)
    limit = page_timeout() if timeout is None else timeout
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), limit)
    except asyncio.TimeoutError:
        future.cancel()  # only helps while it is still queued; a running call keeps its slot
        raise MlflowTimeout(f"{executor.name}: no answer within {limit:g} s") from None


# -- MLflow ---------------------------------------------------------------------------------


@dataclass
class _Client:
    client: Any
    made_at: float = field(default_factory=time.monotonic)


_clients: dict[str, _Client] = {}
_client_lock = threading.Lock()


def _mlflow_client() -> Any:
    """``MlflowHook(...).get_conn()`` for ``[mlops] mlflow_conn_id``, reused for a minute.

    Resolving the hook reads the Airflow connection (database or secrets backend), so it is
    done in the worker thread and not on every call.
    """
    conn_id = _conn_id()
    with _client_lock:
        found = _clients.get(conn_id)
        if found is not None and time.monotonic() - found.made_at < CLIENT_TTL_SECONDS:
            return found.client
    from airflow_mlops.core.mlflow_settings import ensure_embedded_store
    from airflow_mlops.hooks.mlflow import MlflowHook

    hook = MlflowHook(mlflow_conn_id=conn_id)
    ensure_embedded_store(hook.settings)  # no-op unless the store is a local SQLite file
    client = hook.get_conn()
    with _client_lock:
        _clients[conn_id] = _Client(client)
    return client


# MLflow's HTTP client reads its timeout and retries from environment variables on every
# request. Setting them in os.environ would change them for the whole API server (and race
# with other threads), so the page uses the per-thread limits of
# :func:`airflow_mlops.core.mlflow_client.http_limits`: only the page's threads see them, and
# the stricter of the page's and the connection's limits wins.
_page_limit = threading.local()


@contextmanager
def _limit_mlflow_http_in_this_thread(timeout: float) -> Iterator[None]:
    """MLflow requests made by this thread give up soon after ``timeout`` s, with no retry;
    and :func:`thread_map` starts no new work after ``timeout`` s (the caller has given up).

    The request timeout is a second longer than the caller's wait, so the caller always
    sees :class:`MlflowTimeout` (504), never whichever of the two clocks fired first."""
    from airflow_mlops.core.mlflow_client import HttpLimits, http_limits

    request_timeout = math.ceil(timeout) + 1
    limits = HttpLimits(timeout_seconds=request_timeout, max_retries=0, backoff_factor=0)
    outer = getattr(_page_limit, "deadline", None)
    deadline = time.monotonic() + timeout
    _page_limit.deadline = deadline if outer is None else min(outer, deadline)
    try:
        with http_limits(limits):
            yield
    finally:
        _page_limit.deadline = outer


def thread_map(fn: Callable[[Any], T], items: list[Any]) -> list[T]:
    """``list(map(fn, items))`` on up to :data:`OVERVIEW_THREADS` threads, in order.

    For work already running in the page's MLflow executor (an overview load): the helper
    threads get the same MLflow HTTP limits as the calling thread, and once its deadline has
    passed no item is started any more (:class:`MlflowTimeout`), so a slow but answering
    MLflow cannot keep the slot for one timeout per item.
    """
    deadline = getattr(_page_limit, "deadline", None)

    def limited(item: Any) -> T:
        if deadline is None:
            return fn(item)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MlflowTimeout("the page's MLflow deadline passed; the rest was not read")
        with _limit_mlflow_http_in_this_thread(remaining):
            return fn(item)

    if len(items) < 2:
        return [limited(item) for item in items]
    threads = min(OVERVIEW_THREADS, len(items))
    with concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix="mlops-page-map"
    ) as pool:
        return list(pool.map(limited, items))


async def call_mlflow(work: Callable[[Any], T], *, timeout_seconds: float | None = None) -> T:
    """Run ``work(client)`` in the page's MLflow executor; wait at most ``timeout_seconds``.

    :raises MlflowBusy: the executor already has its maximum of calls pending (answer 503).
    :raises MlflowTimeout: no result within ``timeout_seconds`` (default ``[mlops]
        page_mlflow_timeout_seconds``; answer 504).
    Exceptions raised by ``work`` propagate unchanged.
    """
    limit = page_timeout() if timeout_seconds is None else timeout_seconds

    def in_thread() -> T:
        with _limit_mlflow_http_in_this_thread(limit):
            return work(_mlflow_client())

    return await _run(mlflow_executor(), in_thread, limit)


async def call_blocking(work: Callable[[], T], *, timeout_seconds: float | None = None) -> T:
    """Run ``work()`` (a metadata-database read) in the page's second small executor.

    Same errors as :func:`call_mlflow`.
    """
    return await _run(db_executor(), work, timeout_seconds)


# -- short-lived cache with single flight ---------------------------------------------------


@dataclass
class _Entry:
    value: Any
    fresh_until: float
    stale_until: float


_cache: dict[str, _Entry] = {}
_inflight: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = {}


async def cached(
    key: str, loader: Callable[[], Awaitable[T]], ttl_seconds: float | None = None
) -> T:
    """``loader()``'s value for ``key``, reused for ``ttl_seconds`` (``[mlops]
    page_cache_seconds`` by default).

    Concurrent misses of one key await the same load (single flight). Once expired, the value
    is still returned for ``STALE_FACTOR * ttl_seconds`` more while one background load
    refreshes it, so a visit waits for the registry only when nothing recent is known. A
    failed load is not cached: its error reaches every caller that waited for it (a failed
    background refresh is logged, and the old value served until it is too old). A caller
    that goes away (client closed the connection) does not cancel the load for the others.
    """
    ttl = cache_seconds() if ttl_seconds is None else ttl_seconds
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit.fresh_until > now:
        return hit.value
    task = _flight(key, loader, ttl)
    if hit is not None and hit.stale_until > now:
        return hit.value  # the refresh runs in the background
    return await asyncio.shield(task)


def _flight(key: str, loader: Callable[[], Awaitable[T]], ttl: float) -> asyncio.Task[T]:
    """The running load of ``key`` on this event loop, or a new one."""
    loop = asyncio.get_running_loop()
    flight = _inflight.get(key)
    if flight is not None and flight[0] is loop and not flight[1].done():
        return flight[1]
    task = loop.create_task(_load(key, loader, ttl))
    task.add_done_callback(_log_failed_refresh)
    _inflight[key] = (loop, task)
    return task


def _log_failed_refresh(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:  # also marks it retrieved
        log.warning("Loading the MLOps page data failed: %r", task.exception())


async def _load(key: str, loader: Callable[[], Awaitable[T]], ttl: float) -> T:
    try:
        value = await loader()
        if ttl > 0:
            now = time.monotonic()
            _cache[key] = _Entry(value, now + ttl, now + ttl * (1 + STALE_FACTOR))
        return value
    finally:
        flight = _inflight.get(key)
        if flight is not None and flight[1] is asyncio.current_task():
            del _inflight[key]
