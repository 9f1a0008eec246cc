"""One MLflow server that never answers must not stall the API server.

The page's blocking work runs in :mod:`airflow_mlops.plugins.mlflow_calls`: a small bounded
executor with short timeouts, a short cache with single flight, and MLflow HTTP limits that
apply to those threads only. The unit tests below check those pieces; the last test starts
the real ``airflow api-server`` with the page, points ``mlflow_default`` at a socket that
accepts connections and never replies, fires 40 concurrent page requests and checks that
Airflow's own health routes (REST API and Execution API) still answer within 1 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _servers import api_server_for

from airflow_mlops.plugins import mlflow_calls
from airflow_mlops.plugins.mlflow_calls import MlflowBusy, MlflowTimeout

PAGE_TIMEOUT_S = 3
HEALTH_BUDGET_S = 1.0
ADMIN_PASSWORD = "responsiveness-admin-password"


@pytest.fixture
def fresh_calls() -> Iterator[None]:
    mlflow_calls.reset()
    yield
    mlflow_calls.reset()


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """A TCP address that accepts connections and never answers (a hung MLflow)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)  # never accept(): the kernel completes handshakes, nobody replies
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def silent_connection(url: str) -> str:
    # MLflow's own defaults (120 s per request, 7 retries) would keep a thread for minutes.
    return json.dumps({"conn_type": "mlflow", "host": url, "extra": {}})


# -- the executor, the timeouts and the cache -------------------------------------------------


def test_full_executor_answers_busy_at_once(fresh_calls: None) -> None:
    release = threading.Event()

    async def scenario() -> None:
        executor = mlflow_calls.db_executor()
        held = [
            asyncio.ensure_future(mlflow_calls.call_blocking(release.wait, timeout_seconds=5))
            for _ in range(executor.capacity)
        ]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(MlflowBusy):
            await mlflow_calls.call_blocking(lambda: None)
        assert time.monotonic() - started < 0.1
        release.set()
        await asyncio.gather(*held)
        assert executor.pending == 0
        assert await mlflow_calls.call_blocking(lambda: 42) == 42

    asyncio.run(scenario())


def test_slow_call_times_out_and_keeps_its_slot_until_it_ends(fresh_calls: None) -> None:
    release = threading.Event()

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(MlflowTimeout):
            await mlflow_calls.call_blocking(release.wait, timeout_seconds=0.2)
        assert time.monotonic() - started < 1
        assert mlflow_calls.db_executor().pending == 1  # the thread still runs
        release.set()
        await asyncio.sleep(0.1)
        assert mlflow_calls.db_executor().pending == 0

    asyncio.run(scenario())


def test_cache_shares_one_load_then_refreshes_in_the_background(fresh_calls: None) -> None:
    loads = []

    async def load() -> int:
        loads.append(1)
        await asyncio.sleep(0.1)
        return len(loads)

    async def scenario() -> None:
        ttl = 0.3  # stale for STALE_FACTOR * ttl = 1.2 s more
        values = await asyncio.gather(*(mlflow_calls.cached("k", load, ttl) for _ in range(20)))
        assert values == [1] * 20 and len(loads) == 1  # single flight
        assert await mlflow_calls.cached("k", load, ttl) == 1  # fresh
        await asyncio.sleep(0.35)
        started = time.monotonic()
        assert await mlflow_calls.cached("k", load, ttl) == 1  # stale: served at once ...
        assert time.monotonic() - started < 0.05
        await asyncio.sleep(0.15)
        assert await mlflow_calls.cached("k", load, ttl) == 2  # ... and refreshed behind
        assert len(loads) == 2
        await asyncio.sleep(0.3 + 1.3)  # too old to serve: the caller waits for a load
        assert await mlflow_calls.cached("k", load, ttl) == 3

    asyncio.run(scenario())


def test_failed_load_reaches_every_waiter_and_is_not_cached(fresh_calls: None) -> None:
    calls = []

    async def load() -> str:
        calls.append(1)
        await asyncio.sleep(0.05)
        if len(calls) == 1:
            raise MlflowTimeout("first load fails")
        return "ok"

    async def scenario() -> None:
        results = await asyncio.gather(
            *(mlflow_calls.cached("x", load, 10) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, MlflowTimeout) for r in results)
        assert await mlflow_calls.cached("x", load, 10) == "ok"

    asyncio.run(scenario())


def test_mlflow_http_limits_apply_to_the_page_threads_only(
    fresh_calls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    environ = dict(os.environ)

    def seen(_client: object) -> tuple[int, int]:
        return MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()

    def seen_by_helper_threads(client: object) -> set[tuple[int, int]]:
        return set(mlflow_calls.thread_map(lambda _: seen(client), list(range(8))))

    monkeypatch.setattr(mlflow_calls, "_mlflow_client", lambda: None)  # no MLflow needed here
    inside = asyncio.run(mlflow_calls.call_mlflow(seen, timeout_seconds=4))
    helpers = asyncio.run(mlflow_calls.call_mlflow(seen_by_helper_threads, timeout_seconds=5))
    # A request gives up a second after the page stops waiting (the caller sees 504 first).
    assert helpers == {(6, 0)}  # an overview's parallel reads keep the page's limits
    assert inside == (5, 0)
    assert (MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()) != (5, 0)
    assert dict(os.environ) == environ  # nothing process-wide was set


def test_overview_load_stops_reading_once_the_page_gave_up(
    fresh_calls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow but answering MLflow: the load stops at the deadline instead of reading all."""
    monkeypatch.setattr(mlflow_calls, "_mlflow_client", lambda: None)  # no MLflow needed here
    read = []

    def slow_read(item: int) -> int:
        time.sleep(0.2)
        read.append(item)
        return item

    async def scenario() -> float:
        with pytest.raises(MlflowTimeout):
            work = lambda _client: mlflow_calls.thread_map(slow_read, list(range(40)))  # noqa: E731
            await mlflow_calls.call_mlflow(work, timeout_seconds=0.5)
        started = time.monotonic()
        while mlflow_calls.mlflow_executor().pending and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    freed_after = asyncio.run(scenario())
    assert freed_after < 0.6, freed_after  # all 40 reads would take 2 s on 4 threads
    assert len(read) < 16


def test_call_to_a_silent_mlflow_frees_its_thread(
    fresh_calls: None, silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's client itself gives up in the page's threads: a stuck slot frees itself."""
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", silent_connection(silent_server))

    async def scenario() -> float:
        with pytest.raises(MlflowTimeout):
            await mlflow_calls.call_mlflow(
                lambda c: c.search_registered_models(), timeout_seconds=1
            )
        started = time.monotonic()
        while mlflow_calls.mlflow_executor().pending and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    freed_after = asyncio.run(scenario())
    assert mlflow_calls.mlflow_executor().pending == 0
    assert freed_after < 3, freed_after


# -- the real API server ----------------------------------------------------------------------


HEALTH_TEST = "test_health_routes_answer_while_40_page_requests_wait_for_a_silent_mlflow"


@pytest.fixture(scope="module", autouse=True)
def booting_api_server(
    request: pytest.FixtureRequest,
    silent_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    airflow_home: Path,
) -> Iterator[Any]:
    """``airflow api-server`` (one worker) with the page, reading a silent MLflow; started
    with the module's first test when the API-server test is selected, so its ~10 s boot
    overlaps the unit tests above it."""
    if not any(item.name == HEALTH_TEST for item in request.session.items):
        yield None
        return
    server = api_server_for(
        tmp_path_factory.mktemp("api-server"),
        ADMIN_PASSWORD,
        {
            "AIRFLOW__MLOPS__PAGE_MLFLOW_TIMEOUT_SECONDS": str(PAGE_TIMEOUT_S),
            "AIRFLOW_CONN_MLFLOW_DEFAULT": silent_connection(silent_server),
        },
    ).start()
    try:
        yield server
    finally:
        server.kill()  # a graceful stop takes ~7 s and this server holds nothing to save


@pytest.fixture(scope="module")
def api_server(booting_api_server: Any) -> str:
    booting_api_server.wait_ready(timeout_s=60)
    return booting_api_server.url


def _timed_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, float]:
    import httpx

    started = time.monotonic()
    try:
        status = httpx.get(url, headers=headers, timeout=timeout).status_code
    except httpx.TimeoutException:
        status = 0
    return status, time.monotonic() - started


@pytest.mark.e2e
def test_health_routes_answer_while_40_page_requests_wait_for_a_silent_mlflow(
    api_server: str,
) -> None:
    import httpx

    token = httpx.post(
        f"{api_server}/auth/token",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=10,
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    page_urls = [
        f"{api_server}/mlops/api/models",
        f"{api_server}/mlops/",
        f"{api_server}/mlops/reports/runs/{'0' * 32}/artifacts/monitoring/drift/r.html",
    ]
    health_urls = [f"{api_server}/api/v2/monitor/health", f"{api_server}/execution/health"]
    for url in health_urls:  # warm up (first requests import route code)
        assert _timed_get(url)[0] == 200

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        pages = [pool.submit(_timed_get, page_urls[i % 3], auth) for i in range(40)]
        time.sleep(0.5)  # let every page request reach the server
        health = []
        for _ in range(4):
            health += [(*_timed_get(url, timeout=10), url) for url in health_urls]
            time.sleep(0.2)
        results = [p.result() for p in pages]

    print("health (status, seconds):", [(s, round(t, 3)) for s, t, _ in health])
    print("pages (status, seconds):", sorted((s, round(t, 2)) for s, t in results))
    for status, seconds, url in health:
        assert status == 200 and seconds < HEALTH_BUDGET_S, (url, status, seconds)
    for status, seconds in results:
        # Busy (503) at once, or timed out (504) after the page's own timeout: never hung.
        assert status in (503, 504), (status, seconds)
        assert seconds < PAGE_TIMEOUT_S + 3, (status, seconds)
    # All 40 share one load of the cached overview (single flight), so the executor is not
    # even full here; test_full_executor_answers_busy_at_once shows the 503 when it is.

    # The stuck MLflow calls give up on their own: the executor takes work again (504, not 503).
    time.sleep(PAGE_TIMEOUT_S + 1)
    status, seconds = _timed_get(page_urls[2], auth)
    assert (status, seconds < PAGE_TIMEOUT_S + 3) == (504, True), (status, seconds)
