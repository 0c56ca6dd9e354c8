"""Fixtures: a sample product repository from the shipped templates, on a real server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sample_repo import ProductRepo, make_repo

from sigma_db import DatabaseSettings
from sigma_db.testing import TestServer


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_stream() -> None:
    """Drop log handlers an earlier test's env.py (``fileConfig``) left on its closed capture.

    The template's env.py configures logging to the ``sys.stderr`` of the moment; under capsys
    that stream is closed after the test, and anything logged before the next env.py runs (the
    dry run reads the database first) printed a logging traceback into the next test's output.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)


@pytest.fixture
def repo(tmp_path: Path, db_settings: DatabaseSettings) -> ProductRepo:
    """A product repo (lab, per-product layout, schema app) on a fresh database."""
    return make_repo(tmp_path / "lab", db_settings)


@pytest.fixture
def offline_repo(tmp_path: Path, sigma_postgresql: TestServer) -> ProductRepo:
    """A product repo whose settings name a server that refuses connections (offline use)."""
    from sigma_db.server import free_port

    return make_repo(tmp_path / "lab", sigma_postgresql.settings("edge_lab", port=free_port()))
