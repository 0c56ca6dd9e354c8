"""Units of work, sync and async: commit on success, roll back on error."""

from __future__ import annotations

import pytest
from sqlalchemy import String, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sigma_db import (
    DatabaseSettings,
    IdentityPrimaryKey,
    ProductBase,
    Timestamps,
    async_session_dependency,
    async_session_scope,
    create_async_engine,
    create_async_session_factory,
    create_session_factory,
    session_dependency,
    session_scope,
)


class Base(ProductBase, DeclarativeBase):
    pass


class Pack(IdentityPrimaryKey, Base):
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def factory(engine: Engine):  # type: ignore[no-untyped-def]
    Base.metadata.create_all(engine)
    return create_session_factory(engine)


def count(factory) -> int:  # type: ignore[no-untyped-def]
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Pack)))


def test_scope_commits(factory) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        session.add(Pack(name="alpha"))
    assert count(factory) == 1


def test_scope_rolls_back_on_error(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        session.add(Pack(name="alpha"))
        session.flush()
        raise RuntimeError("boom")
    assert count(factory) == 0


def test_objects_stay_loaded_after_commit(factory) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        pack = Pack(name="alpha")
        session.add(pack)
    assert pack.name == "alpha" and pack.id is not None  # no refresh needed, no error


def test_request_dependency_commits_and_rolls_back(factory) -> None:  # type: ignore[no-untyped-def]
    get_session = session_dependency(factory)
    ok = get_session()
    next(ok).add(Pack(name="alpha"))
    with pytest.raises(StopIteration):
        next(ok)
    failing = get_session()
    next(failing).add(Pack(name="beta"))
    with pytest.raises(ValueError, match="handler failed"):
        failing.throw(ValueError("handler failed"))
    assert count(factory) == 1


async def _async_roundtrip(settings: DatabaseSettings) -> tuple[list[str], int]:
    engine = create_async_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        factory = create_async_session_factory(engine)
        async with async_session_scope(factory) as session:
            session.add(Pack(name="alpha"))
        with pytest.raises(RuntimeError):
            async with async_session_scope(factory) as session:
                session.add(Pack(name="beta"))
                raise RuntimeError("boom")
        get_session = async_session_dependency(factory)
        generator = get_session()
        session = await anext(generator)
        path = list(await session.scalar(select(func.current_schemas(False))))
        total = int(await session.scalar(select(func.count()).select_from(Pack)) or 0)
        await generator.aclose()
        return path, total
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_async_engine_and_scope(db_settings: DatabaseSettings) -> None:
    path, total = await _async_roundtrip(db_settings)
    assert path == ["app", "public"]
    assert total == 1


class Card(IdentityPrimaryKey, Timestamps, Base):
    title: Mapped[str] = mapped_column(String(50))


def test_timestamps_readable_after_the_unit_of_work(factory) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        card = Card(title="first")
        session.add(card)
    created = card.created_at
    with session_scope(factory) as session:
        card = session.merge(card)
        card.title = "second"
    assert card.updated_at >= created  # loaded by RETURNING, no DetachedInstanceError
