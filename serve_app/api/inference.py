"""Serving over HTTP: the prediction routes (data plane) and deploy / promote / rollback (control plane).

``prediction_router`` answers predictions: ``/v1/models/{id}/predict|rank|embeddings/{side}`` by
model id, the same under ``/v1/endpoints/{alias}/`` by alias, and the KServe Open Inference
Protocol v2 (``POST /v2/models/{name}/infer``, ``GET /v2/models/{name}``, ``GET
/v2/models/{name}/ready``, ``GET /v2/health/live|ready``, ``GET /v2``), where ``name`` is an alias
or a model id. A body is rows (``{"rows": [...]}``), columns (``{"columns": {feature: [...]}}``;
rank: ``"candidates": {"columns": ...}``) or named tensors; the routes parse the JSON and hand it
to a ``PredictionService`` (``autocompress.serving``), which checks every form on one path (a
missing, unknown or mistyped feature is a 422 naming it), runs the model and shapes the answer.
Unknown models and aliases are 404; a model that cannot be served (its file outside the artifact
root, not a two-tower model for embeddings) is 409.

``control_router`` moves aliases: ``POST /v1/models/{id}/deploy``, ``GET /v1/endpoints/{alias}``,
``POST /v1/endpoints/{alias}/promote|rollback``. The model is checked (and opened where it will
serve) before the alias moves in the store; serving replicas pick the move up from the store
within their alias refresh period (``serve_app.deployments``), in process at once.

Where the routes run:

* ``router`` (both) joins the job API (``create_app``). Run on its own (``uvicorn
  serve_app.api:app``) the API answers predictions in process (``LocalPredictor``, aliases read
  from the store every ``ALIAS_REFRESH_S``). In the Ray Serve application the job API is the
  control plane only: its prediction routes answer 307 to the serving application's route prefix
  (``app.state.predictions_at``), and deploy opens models through ``app.state.model_loader``.
* ``prediction_app`` is the serving application's ASGI app: the prediction routes alone, over
  the service of the replica that holds the sessions (on Starlette, documented by FastAPI).

Every response carries ``X-Request-ID`` (the caller's, Ray Serve's, or a new one), and every log
line written while a request is handled carries it too (``RequestIdFilter``; inside Ray Serve the
replica's log format adds it).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from autocompress.errors import AutocompressError
from autocompress.serving import (
    AliasTable,
    LocalPredictor,
    ModelCatalog,
    PayloadError,
    PredictionService,
    Side,
    keep_aliases_fresh,
    read_aliases,
)
from autocompress.store import ConflictError, DeploymentRecord, NotFoundError, Store
from serve_app.api.errors import COMMON_ERRORS, add_error_handlers, error_responses
from serve_app.api.guards import RequestGuard
from serve_app.api.settings import Settings

logger = logging.getLogger("autocompress.serving")

REQUEST_ID_HEADER = "X-Request-ID"
ALIAS_REFRESH_S = 0.5
SERVER_NAME = "autocompress"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("autocompress_request_id", default="-")
_echo_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("echo_request_id", default=None)


def current_request_id() -> str:
    """The id of the request being handled ("-" outside a request)."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the request being handled) and prefixes the message with it.

    Install it on a handler to get the request id into every line logged while a request runs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        rid = _request_id.get()
        record.request_id = rid
        if rid != "-" and not str(record.msg).startswith("[request_id="):
            record.msg = f"[request_id={rid}] {record.msg}"
        return True


_serve_context: Any = None


def _serve_request_id() -> str | None:
    global _serve_context
    if _serve_context is None:
        from ray.serve.context import _get_serve_request_context

        _serve_context = _get_serve_request_context
    rid = _serve_context().request_id
    return rid or None


def _bind(request: Request) -> str:
    """Take the request id from Ray Serve, the ``X-Request-ID`` header or a new uuid, for this request's
    log lines; outside Serve ``_json`` echoes it (inside, the proxy or replica echoes its own)."""
    in_serve = _serve_request_id()
    rid = in_serve or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    _request_id.set(rid)
    _echo_request_id.set(None if in_serve else rid)
    return rid


async def bind_request_id(request: Request, response: Response) -> str:
    """``_bind`` as a dependency (the control routes), the id echoed on the response they build."""
    rid = _bind(request)
    if _echo_request_id.get() is not None:
        response.headers[REQUEST_ID_HEADER] = rid
    return rid


def _json(content: dict[str, Any], status_code: int = 200) -> JSONResponse:
    """A JSON response (built directly: no re-validation of large arrays) with the request id echoed."""
    rid = _echo_request_id.get()
    return JSONResponse(content, status_code=status_code, headers={REQUEST_ID_HEADER: rid} if rid else None)


async def _body(request: Request) -> object:
    """The request's JSON body; a body that is not JSON is a 422 saying why."""
    raw = await request.body()
    if not raw:
        raise PayloadError("body", "required: a JSON object")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PayloadError("body", f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except UnicodeDecodeError:
        raise PayloadError("body", "not UTF-8 text") from None
    except RecursionError:
        raise PayloadError("body", "nested too deeply to be a request") from None


# -- request bodies, as the OpenAPI document shows them (the routes read them with the service) ------


def _documented(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_VALUES = {"type": "object", "additionalProperties": True, "description": "feature name -> value"}
_COLUMNS = {
    "type": "object",
    "additionalProperties": {"type": "array"},
    "description": "feature name -> one value per row",
}
_PREDICT_BODY = _documented(
    {
        "type": "object",
        "description": "Rows of named feature values, or the same values by column: one of the two.",
        "properties": {"rows": {"type": "array", "items": _VALUES, "minItems": 1}, "columns": _COLUMNS},
    }
)
_RANK_BODY = _documented(
    {
        "type": "object",
        "description": "One context (user and query features) and the candidate items; the best k return.",
        "properties": {
            "context": _VALUES,
            "candidates": {
                "oneOf": [
                    {"type": "array", "items": _VALUES, "minItems": 1},
                    {"type": "object", "properties": {"columns": _COLUMNS}, "required": ["columns"]},
                ]
            },
            "k": {"type": "integer", "minimum": 1, "default": 10},
        },
        "required": ["candidates"],
    }
)
_INFER_BODY = _documented(
    {
        "type": "object",
        "description": "An Open Inference Protocol v2 infer request: one tensor per model input.",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"},
                        "data": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                    "required": ["name", "shape", "datatype", "data"],
                },
            },
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "required": ["inputs"],
    }
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeployRequest(_Body):
    """Optionally point an alias (``ranking-prod``) at the model once it is loaded."""

    alias: str | None = Field(default=None, min_length=1, max_length=200)


class PromoteRequest(_Body):
    """The model the alias serves from now on."""

    model_id: str = Field(min_length=1, max_length=64)


# -- where the routes find their service ------------------------------------------------------------


@dataclass
class ControlState:
    """What the control routes share: the catalog, how to open a model where it will serve, and
    whom to tell at once when an alias moves (None: the serving replicas read it from the store)."""

    catalog: ModelCatalog
    load: Callable[[str], Awaitable[dict[str, Any]]]
    moved: Callable[[str, str], None] | None


def _catalog(state: Any) -> ModelCatalog:
    store: Store = state.store
    settings = getattr(state, "settings", None)
    artifact_root = Path(getattr(settings, "work_dir", "runs"))
    return ModelCatalog(store, artifact_root, base_dir=getattr(state, "artifact_base_dir", None))


def _local_service(state: Any) -> PredictionService:
    """The stand-alone API's service, built on first use: models run here, aliases read from the store."""
    service: PredictionService | None = getattr(state, "local_service", None)
    if service is None:
        catalog = _catalog(state)
        service = PredictionService(
            LocalPredictor(catalog).open, aliases=AliasTable(read_aliases(catalog.store))
        )
        state.local_service = service
    return service


def prediction_service(request: Request) -> PredictionService:
    """The app's ``PredictionService`` (request id bound); on the Serve control plane a 307 to the serving
    application. Called by the prediction routes directly: a dependency costs more than the model."""
    _bind(request)
    state = request.app.state
    service: PredictionService | None = getattr(state, "prediction_service", None)
    if service is not None:
        return service
    prefix: str | None = getattr(state, "predictions_at", None)
    if prefix is not None:
        target = prefix.rstrip("/") + request.url.path
        if request.url.query:
            target += f"?{request.url.query}"
        raise HTTPException(
            307,
            f"predictions are answered by the serving application at {prefix}",
            headers={"Location": target},
        )
    return _local_service(state)


async def control_state(request: Request) -> ControlState:
    """The app's ``ControlState``, built on first use from ``app.state.store`` and its settings."""
    state = request.app.state
    control: ControlState | None = getattr(state, "serving_control", None)
    if control is None:
        loader = getattr(state, "model_loader", None)
        if loader is not None:  # the Serve control plane: models open on the serving replicas
            control = ControlState(_catalog(state), loader, None)
        else:
            service = _local_service(state)
            control = ControlState(_catalog(state), service.load, service.aliases.point)
        state.serving_control = control
    return control


@asynccontextmanager
async def _local_serving(app: FastAPI) -> AsyncIterator[None]:
    """Stand-alone API: keep the in-process alias table fresh (jobs deploy from other processes)."""
    refresher = None
    if getattr(app.state, "predictions_at", None) is None and getattr(app.state, "store", None) is not None:
        store: Store = app.state.store

        async def apply(table: Any, read_at: float) -> None:
            service = getattr(app.state, "local_service", None)
            if service is not None:
                await service.sync_aliases(table, read_at)

        refresher = asyncio.create_task(
            keep_aliases_fresh(lambda: read_aliases(store), apply, ALIAS_REFRESH_S)
        )
    try:
        yield
    finally:
        if refresher is not None:
            refresher.cancel()
        service = getattr(app.state, "local_service", None)
        if service is not None:
            service.close()


Control = Annotated[ControlState, Depends(control_state)]
RequestId = Annotated[str, Depends(bind_request_id)]


class PredictionRoute(APIRoute):
    """A prediction route as FastAPI documents it (path, body, responses), run without FastAPI's
    per-request work: the endpoint gets the request and its path parameters as text, and reads and
    checks the body itself (``_body``, then the service). That work (dependency solving, parameter
    validation) took ~0.17 ms a request here, as long as the reference model's run."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _with_path_params(self.endpoint)


def _with_path_params(endpoint: Callable[..., Any]) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """A prediction endpoint as a Starlette one: called with the request and its path parameters."""

    async def handle(request: Request) -> Response:
        response: Response = await endpoint(request=request, **request.path_params)
        return response

    return handle


prediction_router = APIRouter(tags=["predictions"], route_class=PredictionRoute)
control_router = APIRouter(tags=["serving"])


# -- predictions by model id and by alias -----------------------------------------------------------


@prediction_router.post("/v1/models/{model_id}/predict", openapi_extra=_PREDICT_BODY)
async def predict(model_id: str, request: Request) -> JSONResponse:
    """Click probabilities (and logits) of rows, or columns, of named features."""
    service = prediction_service(request)
    body = await _body(request)  # read first: a body over the limit is refused as it streams in
    return _json(await service.predict(await service.runner(model_id), body))


@prediction_router.post("/v1/models/{model_id}/rank", openapi_extra=_RANK_BODY)
async def rank(model_id: str, request: Request) -> JSONResponse:
    """The ``k`` best candidates for one context, best first, with their index in ``candidates``."""
    service = prediction_service(request)
    body = await _body(request)
    return _json(await service.rank(await service.runner(model_id), body))


@prediction_router.post("/v1/models/{model_id}/embeddings/{side}", openapi_extra=_PREDICT_BODY)
async def embeddings(model_id: str, side: Side, request: Request) -> JSONResponse:
    """User vectors (from user- and context-side features) or item vectors of a two-tower model."""
    service = prediction_service(request)
    body = await _body(request)
    return _json(await service.embeddings(await service.runner(model_id), side, body))


@prediction_router.post("/v1/endpoints/{alias}/predict", openapi_extra=_PREDICT_BODY)
async def alias_predict(alias: str, request: Request) -> JSONResponse:
    """``predict`` with the model the alias serves."""
    service = prediction_service(request)
    body = await _body(request)
    return _json(await service.predict(await service.for_alias(alias), body))


@prediction_router.post("/v1/endpoints/{alias}/rank", openapi_extra=_RANK_BODY)
async def alias_rank(alias: str, request: Request) -> JSONResponse:
    """``rank`` with the model the alias serves."""
    service = prediction_service(request)
    body = await _body(request)
    return _json(await service.rank(await service.for_alias(alias), body))


@prediction_router.post("/v1/endpoints/{alias}/embeddings/{side}", openapi_extra=_PREDICT_BODY)
async def alias_embeddings(alias: str, side: Side, request: Request) -> JSONResponse:
    """``embeddings`` with the model the alias serves."""
    service = prediction_service(request)
    body = await _body(request)
    return _json(await service.embeddings(await service.for_alias(alias), side, body))


# -- the Open Inference Protocol v2 ------------------------------------------------------------------


def _oip_error(exc: AutocompressError) -> JSONResponse:
    """An error as the protocol's clients read it (``error``), with ``detail`` as the other routes."""
    status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 422
    return _json({"error": str(exc), "detail": str(exc)}, status)


@prediction_router.post("/v2/models/{model_name}/infer", openapi_extra=_INFER_BODY)
async def oip_infer(model_name: str, request: Request) -> JSONResponse:
    """Open Inference Protocol infer: a named tensor per feature in, ``logits`` and ``probabilities`` out."""
    service = prediction_service(request)
    try:
        if "inference-header-content-length" in request.headers:
            raise PayloadError("body", "the binary tensor data extension is not supported; send JSON data")
        body = await _body(request)
        return _json(await service.infer(await service.for_name(model_name), model_name, body))
    except AutocompressError as exc:
        return _oip_error(exc)


@prediction_router.get("/v2/models/{model_name}")
async def oip_model_metadata(model_name: str, request: Request) -> JSONResponse:
    """Open Inference Protocol model metadata: the model's inputs (its features) and outputs."""
    service = prediction_service(request)
    try:
        return _json(service.metadata(await service.for_name(model_name), model_name))
    except AutocompressError as exc:
        return _oip_error(exc)


@prediction_router.get("/v2/models/{model_name}/ready")
async def oip_model_ready(model_name: str, request: Request) -> JSONResponse:
    """200 once the model is open on this replica (this opens it); 404 / 409 when it cannot be."""
    service = prediction_service(request)
    try:
        await service.for_name(model_name)
    except AutocompressError as exc:
        return _oip_error(exc)
    return _json({"name": model_name, "ready": True})


@prediction_router.get("/v2/health/live")
async def oip_live(request: Request) -> JSONResponse:
    """Open Inference Protocol server liveness."""
    prediction_service(request)
    return _json({"live": True})


@prediction_router.get("/v2/health/ready")
async def oip_ready(request: Request) -> JSONResponse:
    """Open Inference Protocol server readiness: this replica answers inference requests."""
    prediction_service(request)
    return _json({"ready": True})


@prediction_router.get("/v2")
async def oip_server_metadata(request: Request) -> JSONResponse:
    """Open Inference Protocol server metadata."""
    prediction_service(request)
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("autocompress")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        release = "0"
    return _json({"name": SERVER_NAME, "version": release, "extensions": []})


# -- deploy, promote, roll back ----------------------------------------------------------------------


def _deployment_view(record: DeploymentRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "alias": record.alias,
        "model_id": record.model_id,
        "active": record.active,
        "created_at": record.created_at.isoformat(),
        "replaced_at": record.replaced_at.isoformat() if record.replaced_at else None,
        "rolled_back_at": record.rolled_back_at.isoformat() if record.rolled_back_at else None,
    }


async def _point_alias(control: ControlState, alias: str, model_id: str) -> dict[str, Any]:
    """Check and open the model (so a broken one is refused before any traffic moves), then move the alias."""
    model = await asyncio.to_thread(control.catalog.get, model_id)
    loaded = await control.load(model.id)
    record = await asyncio.to_thread(control.catalog.store.deploy, alias, model.id)
    if control.moved is not None:
        control.moved(alias, model.id)
    logger.info("alias %s -> model %s", alias, model.id)
    return {"deployment": _deployment_view(record), "model": loaded}


@control_router.post("/v1/models/{model_id}/deploy")
async def deploy(
    model_id: str, control: Control, _rid: RequestId, body: DeployRequest | None = None
) -> dict[str, Any]:
    """Open the model on the serving replicas; with ``alias``, point the alias at it (recorded)."""
    if body is not None and body.alias is not None:
        return await _point_alias(control, body.alias, model_id)
    model = await asyncio.to_thread(control.catalog.get, model_id)
    loaded = await control.load(model.id)
    logger.info("deployed model %s", model.id)
    return {"deployment": None, "model": loaded}


@control_router.get("/v1/endpoints/{alias}")
async def endpoint(alias: str, control: Control, _rid: RequestId) -> dict[str, Any]:
    """The model the alias serves now and the alias's history, oldest first."""
    active = await asyncio.to_thread(control.catalog.active, alias)
    history = await asyncio.to_thread(control.catalog.store.deployment_history, alias)
    return {
        "alias": alias,
        "model_id": active.model_id,
        "active": _deployment_view(active),
        "history": [_deployment_view(d) for d in history],
    }


@control_router.post("/v1/endpoints/{alias}/promote")
async def promote(alias: str, body: PromoteRequest, control: Control, _rid: RequestId) -> dict[str, Any]:
    """Point the alias at another model (opened first); the previous one stays in its history."""
    return await _point_alias(control, alias, body.model_id)


@control_router.post("/v1/endpoints/{alias}/rollback")
async def rollback(alias: str, control: Control, _rid: RequestId) -> dict[str, Any]:
    """Put the alias back on the model it served before the last promote (409 if there was none)."""
    record = await asyncio.to_thread(control.catalog.store.rollback, alias)
    if control.moved is not None:
        control.moved(alias, record.model_id)
    logger.info("alias %s rolled back to model %s", alias, record.model_id)
    return {"deployment": _deployment_view(record)}


router = APIRouter(lifespan=_local_serving)
router.include_router(prediction_router)
router.include_router(control_router)


def prediction_app(
    service: PredictionService,
    settings: Settings,
    *,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Starlette:
    """The serving application's ASGI app: the prediction routes over ``service``.

    The routes are ``prediction_router``'s endpoints on a plain Starlette app: FastAPI's
    per-request layers around them (its middleware, router and exception stacks) cost ~0.1 ms a
    request, a tenth of the replica's event loop under load (measured in process). Their OpenAPI
    document (``/openapi.json``, viewed at ``/docs``) is FastAPI's, built once from the router.
    ``settings`` give the bearer token and body limit (the job API's ``RequestGuard``);
    ``background`` (the alias refresh) runs from startup to shutdown.
    """

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(background()) if background is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            service.close()

    documented = FastAPI(
        title="autocompress serving",
        version="1",
        summary="Predict, rank and embed with registered models; KServe Open Inference Protocol v2.",
    )
    documented.include_router(prediction_router, responses=error_responses(*COMMON_ERRORS, 404, 409))
    document = documented.openapi()

    async def openapi(request: Request) -> JSONResponse:
        root = request.scope.get("root_path", "")  # behind a route prefix: what "try it" calls
        return JSONResponse({**document, "servers": [{"url": root}]} if root else document)

    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="autocompress serving")

    routes = [
        Route(
            route.path,
            _with_path_params(route.endpoint),
            methods=sorted(route.methods or ()),
            name=route.name,
        )
        for route in prediction_router.routes
        if isinstance(route, APIRoute)
    ]
    routes += [Route("/openapi.json", openapi, methods=["GET"]), Route("/docs", docs, methods=["GET"])]
    app = Starlette(
        routes=routes, middleware=[Middleware(RequestGuard, settings=settings)], lifespan=lifespan
    )
    app.state.prediction_service = service
    add_error_handlers(app)
    return app
