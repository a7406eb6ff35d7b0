"""What a route takes from the app it runs in: the store and the settings, as FastAPI dependencies.

The app factory puts both on ``app.state``; routes declare ``store: StoreDep`` or
``settings: SettingsDep`` and stay free of globals, so two apps can run side by side in a test.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from autocompress.store import Store
from serve_app.api.settings import Settings

__all__ = ["SettingsDep", "StoreDep"]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
