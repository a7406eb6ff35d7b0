"""The query parameters of paged listings: how many rows and from which offset.

Offsets and ids beyond a 64-bit integer are refused with a 422, not sent to the database.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

__all__ = ["MAX_DB_INTEGER", "PageLimit", "PageOffset"]

MAX_DB_INTEGER = 2**63 - 1

PageLimit = Annotated[int, Query(ge=1, le=1000)]
PageOffset = Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)]
