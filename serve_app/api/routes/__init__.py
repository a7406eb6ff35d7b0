"""The job API's routers, one module per resource: jobs, registered models, search spaces, health.

``ROUTERS`` is the order the app factory includes them in (it fixes the order of the OpenAPI
document's paths).
"""

from __future__ import annotations

from serve_app.api.routes.health import health_router
from serve_app.api.routes.jobs import jobs_router
from serve_app.api.routes.models import models_router
from serve_app.api.routes.search_spaces import search_spaces_router

__all__ = ["ROUTERS", "health_router", "jobs_router", "models_router", "search_spaces_router"]

ROUTERS = (jobs_router, models_router, search_spaces_router, health_router)
