"""Shared fixtures: a private corpus cache for the whole session (subprocesses inherit it),
and free loopback ports for the servers some tests start (Ray, PostgreSQL)."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    if "SQA_NAS_CACHE" not in os.environ:
        os.environ["SQA_NAS_CACHE"] = str(tmp_path_factory.mktemp("sqa-nas-cache"))
    yield


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port free on 127.0.0.1 right now (the OS's ephemeral
    range, so never inside Ray's default worker ports 10002-19999)."""
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick
