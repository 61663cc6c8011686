"""Shared fixtures: a private corpus cache for the whole session (subprocesses inherit it),
free loopback ports for the servers some tests start (Ray, PostgreSQL), seeded RNGs."""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch


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


@pytest.fixture
def seeded():
    """Seed Python's and torch's global RNGs, so a test draws the same numbers wherever and
    in whatever order it runs (`pytestmark = pytest.mark.usefixtures("seeded")`)."""
    random.seed(0)
    torch.manual_seed(0)
    yield
