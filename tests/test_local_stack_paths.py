"""Where the local stack keeps PostgreSQL's files (deploy/local_stack.py).

As root, PostgreSQL runs as the ``postgres`` user, who cannot enter a private checkout (a
clone under ``mktemp -d`` is 0700): the e2e stack then failed at initdb with "Permission
denied". These tests pin where the data goes in each case.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import local_stack as stack_module  # deploy/ is on pytest's pythonpath
import pytest


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
