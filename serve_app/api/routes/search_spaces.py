"""The search-space catalogue route (``/v1/search-spaces``): the built-in spaces a job may name.

The catalogue is read from the packaged YAML files once per process; the files do not change
while the server runs.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter

__all__ = ["search_spaces_router"]

search_spaces_router = APIRouter(tags=["service"])


@functools.cache
def _search_spaces() -> list[dict[str, Any]]:
    from autocompress.search.space import list_search_spaces, load_search_space

    out = []
    for family, presets in list_search_spaces().items():
        base = load_search_space(family)
        entries = []
        for preset in presets:
            space = load_search_space(family, preset)
            entries.append(
                {"name": preset, "description": space.description, "budget": space.budget.to_dict()}
            )
        out.append(
            {
                "family": family,
                "description": base.description,
                "budget": base.budget.to_dict(),
                "presets": entries,
            }
        )
    return out


@search_spaces_router.get("/v1/search-spaces")
def search_spaces() -> dict[str, Any]:
    """The built-in search spaces: per model family its presets with their descriptions and budgets."""
    return {"search_spaces": _search_spaces()}
