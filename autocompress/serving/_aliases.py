"""Which model each alias serves, held in memory where predictions are answered.

The store is the source of truth (``Store.deploy`` / ``rollback`` write it); a serving replica
keeps an ``AliasTable`` read from it (``read_aliases``) and refreshed in the background
(``keep_aliases_fresh``), so a request by alias is resolved without a database call, and a
database that goes away leaves the replicas serving the aliases they last read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from autocompress.store import NotFoundError, Store

logger = logging.getLogger("autocompress.serving")


class AliasTable:
    """alias -> model id, as last read; ``resolve`` is what a request by alias costs (a dict lookup)."""

    def __init__(self, models: Mapping[str, str] | None = None) -> None:
        self._models: dict[str, str] = dict(models or {})
        self._pointed_at: dict[str, float] = {}  # alias -> when (monotonic) it was last pointed here

    def resolve(self, alias: str) -> str:
        """The model id the alias serves; ``NotFoundError`` when it serves none."""
        model_id = self._models.get(alias)
        if model_id is None:
            raise NotFoundError(f"alias: {alias!r} has no active deployment")
        return model_id

    def get(self, alias: str) -> str | None:
        return self._models.get(alias)

    def point(self, alias: str, model_id: str) -> None:
        """The alias serves ``model_id`` from the next request on."""
        self._models[alias] = model_id
        self._pointed_at[alias] = time.monotonic()

    def pointed_since(self, alias: str, since: float) -> bool:
        """Whether the alias was pointed here after ``since`` (a store read begun then may be older)."""
        return self._pointed_at.get(alias, float("-inf")) > since

    def drop(self, alias: str) -> None:
        self._models.pop(alias, None)
        self._pointed_at.pop(alias, None)

    def snapshot(self) -> dict[str, str]:
        return dict(self._models)


def read_aliases(store: Store) -> dict[str, str]:
    """Every alias that serves a model, and the model, from the store."""
    return store.active_aliases()


async def keep_aliases_fresh(
    read: Callable[[], Mapping[str, str]],
    apply: Callable[[Mapping[str, str], float], Awaitable[object]],
    period_s: float,
) -> None:
    """Until cancelled: every ``period_s`` read the alias table (in a thread) and ``apply`` it, with
    the (monotonic) time the read began.

    A failed read (the database away) keeps the last table and is logged once until a read works.
    """
    failing = False
    while True:
        await asyncio.sleep(period_s)
        began = time.monotonic()
        try:
            table = await asyncio.to_thread(read)
        except Exception as exc:  # any database error: keep serving what was read last
            if not failing:
                logger.warning("alias table: cannot read the store (%s); serving the last one read", exc)
            failing = True
            continue
        if failing:
            logger.info("alias table: the store answers again")
        failing = False
        await apply(table, began)
