"""Shared fixtures: a private corpus cache for the whole session (subprocesses inherit it)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    if "SQA_NAS_CACHE" not in os.environ:
        os.environ["SQA_NAS_CACHE"] = str(tmp_path_factory.mktemp("sqa-nas-cache"))
    yield
