"""Session factories and the unit-of-work scope, sync and async.

``expire_on_commit=False`` everywhere: an API handler commits, then serializes the objects it
just wrote; expiring them would cost one SELECT per object (and fail outright under asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:  # the asyncio layer loads only for services that use it
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = [
    "async_session_dependency",
    "async_session_scope",
    "create_async_session_factory",
    "create_session_factory",
    "session_dependency",
    "session_scope",
]


def create_session_factory(engine: Engine, **options: Any) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to ``engine``; ``options`` override the defaults."""
    return sessionmaker(engine, **({"expire_on_commit": False} | options))


def create_async_session_factory(
    engine: AsyncEngine, **options: Any
) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` bound to ``engine``; ``options`` override the defaults."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    return async_sessionmaker(engine, **({"expire_on_commit": False} | options))


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends, roll back if it raises, always close."""
    with factory() as session, session.begin():
        yield session


@asynccontextmanager
async def async_session_scope(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Async twin of :func:`session_scope`."""
    async with factory() as session, session.begin():
        yield session


def session_dependency(factory: sessionmaker[Session]) -> Callable[[], Iterator[Session]]:
    """A generator function yielding one unit of work per request.

    Framework-neutral: FastAPI takes it as ``Depends(get_session)``. Whatever drives it must
    resume the generator to commit, as FastAPI and ``contextlib.contextmanager`` do: ``next()``
    once more commits; ``close()`` (or throwing an exception in) rolls back, as for a request
    that was abandoned.
    """

    def get_session() -> Iterator[Session]:
        with session_scope(factory) as session:
            yield session

    return get_session


def async_session_dependency(
    factory: async_sessionmaker[AsyncSession],
) -> Callable[[], AsyncIterator[AsyncSession]]:
    """Async twin of :func:`session_dependency`: ``anext()`` commits, ``aclose()`` rolls back."""

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with async_session_scope(factory) as session:
            yield session

    return get_session
