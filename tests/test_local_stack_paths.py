"""Where the local stacks keep their metadata databases and how they open them
(deploy/local_stack.py, tests/_airflow_stack.py).

As root, PostgreSQL runs as the ``postgres`` user, who cannot enter a private checkout (a
clone under ``mktemp -d`` is 0700): the e2e stack then failed at initdb with "Permission
denied". These tests pin where the data goes in each case.

SQLite has one writer at a time: with sqlite3's default 5 s wait, a request that waited longer
on a loaded machine failed with a 500 (an approval answered through the REST API, in CI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import local_stack as stack_module  # deploy/ is on pytest's pythonpath
import pytest
from _airflow_stack import AirflowStack


@pytest.fixture
def local_stack():
    return stack_module


def test_postgres_data_stays_in_the_state_folder_when_other_users_can_reach_it(
    local_stack, monkeypatch
):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # pytest's tmp_path lives under a 0700 folder: make a public one beside it in /tmp.
    public = Path(tempfile.mkdtemp(prefix="mlops-public-", dir=tempfile.gettempdir()))
    try:
        public.chmod(0o755)
        assert local_stack.postgres_dir(public / "state") == public / "state" / "postgres"
    finally:
        shutil.rmtree(public)


def test_postgres_data_moves_out_of_a_private_checkout_when_run_as_root(
    local_stack, tmp_path, monkeypatch
):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    chosen = local_stack.postgres_dir(private / "state")
    assert not chosen.is_relative_to(private)
    assert chosen.parent == Path(local_stack.tempfile.gettempdir())
    assert chosen == local_stack.postgres_dir(private / "state")  # stop --purge finds it again
    assert chosen != local_stack.postgres_dir(private / "other-state")


def test_a_non_root_user_runs_postgres_itself_inside_the_state_folder(
    local_stack, tmp_path, monkeypatch
):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert local_stack.postgres_dir(private / "state") == private / "state" / "postgres"


def sqlite_connect_args(url: str) -> tuple[list, dict]:
    """What SQLAlchemy hands ``sqlite3.connect`` for a metadata URL, as Airflow opens it."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
    from sqlalchemy.engine import make_url

    return SQLiteDialect_pysqlite().create_connect_args(make_url(url))


def test_sqlite_stacks_wait_a_minute_for_the_write_lock(local_stack, tmp_path):
    quick = local_stack.State(
        shape="quick",
        root=str(tmp_path / "quick"),
        dags_folder=str(tmp_path / "dags"),
        ports={"airflow": 1, "mlflow": 2, "s3": 3, "worker_logs": 4, "triggerer_logs": 5},
        admin_password="x",
        fernet_key="x",
        jwt_secret="x",
    )
    live = AirflowStack(tmp_path / "live", users={"admin": "admin"})
    for url, home in (
        (local_stack.airflow_env(quick)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], quick.path),
        (live.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], live.root),
    ):
        args, kwargs = sqlite_connect_args(url)
        assert args == [str(home / "airflow" / "airflow.db")], url
        assert kwargs["timeout"] == 60.0, url
