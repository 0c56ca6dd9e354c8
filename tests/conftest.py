from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from sigma_db import DatabaseSettings, create_engine


@pytest.fixture
def db_settings(sigma_db_settings: DatabaseSettings) -> DatabaseSettings:
    return sigma_db_settings


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = create_engine(db_settings)
    yield engine
    engine.dispose()
