"""Serving routes: predict, rank and two-tower embeddings by model id or alias; deploy, promote, roll back.

``router`` joins the job API with ``app.include_router(router)``. The routes only validate and
shape: a request's rows are checked against the model's FeatureSchema (``RequestEncoder``: a
missing, unknown or mistyped feature is a 422 naming it; an id outside the vocabulary becomes
the out-of-vocabulary id), and the model runs behind a ``Predictor``: a handle to the Ray Serve
model deployment when ``app.state.predictor`` is set (``serve_app.serve``), else an in-process
``LocalPredictor``. The store is ``app.state.store`` and the artifact root the job API's
``settings.work_dir``, as for the rest of the API. Unknown models and aliases are 404; a model
that cannot be served (its file outside the artifact root, not a two-tower model for
embeddings) is 409.

Every response carries ``X-Request-ID`` (the caller's, Ray Serve's, or a new one), and every log
line written while a request is handled carries it too (``RequestIdFilter``; inside Ray Serve the
replica's log format adds it).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from autocompress.serving import (
    MAX_ROWS,
    LocalPredictor,
    ModelCatalog,
    Predictor,
    ServedModel,
    Side,
    probabilities,
    top_k,
)
from autocompress.store import DeploymentRecord, Store

logger = logging.getLogger("autocompress.serving")

REQUEST_ID_HEADER = "X-Request-ID"
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


def _serve_request_id() -> str | None:
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    rid = _get_serve_request_context().request_id
    return rid or None


async def bind_request_id(request: Request, response: Response) -> str:
    """Take the request id from Ray Serve, the ``X-Request-ID`` header or a new uuid; echo it back.

    Inside Ray Serve the proxy echoes its id itself, so the header is only added outside it.
    """
    in_serve = _serve_request_id()
    rid = in_serve or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    _request_id.set(rid)
    _echo_request_id.set(None if in_serve else rid)
    if not in_serve:
        response.headers[REQUEST_ID_HEADER] = rid
    return rid


def _json(content: dict[str, Any]) -> JSONResponse:
    """A JSON response (built directly: no re-validation of large arrays) with the request id echoed."""
    rid = _echo_request_id.get()
    return JSONResponse(content, headers={REQUEST_ID_HEADER: rid} if rid else None)


# -- request bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Body):
    """Rows of named feature values, one object per example."""

    rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)


class RankRequest(_Body):
    """One context (user and query features) and the candidate items to rank in it; the best ``k`` return."""

    context: dict[str, Any] = Field(default_factory=dict)
    candidates: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)
    k: int = Field(default=10, ge=1, le=MAX_ROWS)


class DeployRequest(_Body):
    """Optionally point an alias (``ranking-prod``) at the model once it is loaded."""

    alias: str | None = Field(default=None, min_length=1, max_length=200)


class PromoteRequest(_Body):
    """The model the alias serves from now on."""

    model_id: str = Field(min_length=1, max_length=64)


# -- state ---------------------------------------------------------------------------------------


@dataclass
class ServingState:
    """What the routes share: the catalog of servable models and the predictor that runs them."""

    catalog: ModelCatalog
    predictor: Predictor


async def serving_state(request: Request) -> ServingState:
    """The app's ``ServingState``, built on first use from ``app.state.store`` and its settings."""
    state = request.app.state
    serving: ServingState | None = getattr(state, "serving", None)
    if serving is None:
        store: Store = state.store
        settings = getattr(state, "settings", None)
        artifact_root = Path(getattr(settings, "work_dir", "runs"))
        base_dir = getattr(state, "artifact_base_dir", None)
        catalog = ModelCatalog(store, artifact_root, base_dir=base_dir)
        predictor: Predictor = getattr(state, "predictor", None) or LocalPredictor(catalog)
        serving = ServingState(catalog=catalog, predictor=predictor)
        state.serving = serving
    return serving


State = Annotated[ServingState, Depends(serving_state)]
RequestId = Annotated[str, Depends(bind_request_id)]

router = APIRouter(tags=["serving"])


# -- what a route does, by model ------------------------------------------------------------------


async def _predict(state: ServingState, model: ServedModel, body: PredictRequest) -> JSONResponse:
    features = model.encoder.encode(body.rows)
    logits = await state.predictor.logits(model.id, features)
    logger.info("predict model=%s rows=%d", model.id, len(body.rows))
    return _json(
        {"model_id": model.id, "probabilities": probabilities(logits).tolist(), "logits": logits.tolist()}
    )


async def _rank(state: ServingState, model: ServedModel, body: RankRequest) -> JSONResponse:
    features = model.encoder.encode_ranking(body.context, body.candidates)
    logits = await state.predictor.logits(model.id, features)
    best = top_k(logits, body.k)
    probs = probabilities(logits[best])
    items = [
        {"index": int(i), "probability": float(p), "logit": float(logits[i])}
        for i, p in zip(best.tolist(), probs.tolist(), strict=True)
    ]
    logger.info("rank model=%s candidates=%d k=%d", model.id, len(body.candidates), body.k)
    return _json({"model_id": model.id, "items": items})


async def _embeddings(
    state: ServingState, model: ServedModel, side: Side, body: PredictRequest
) -> JSONResponse:
    names = model.encoder.side_features(side)
    features = model.encoder.encode(body.rows, features=names, not_here=f"not a {side}-tower input")
    vectors = await state.predictor.embeddings(model.id, side, features)
    logger.info("embeddings model=%s side=%s rows=%d", model.id, side, len(body.rows))
    return _json(
        {"model_id": model.id, "side": side, "dim": int(vectors.shape[1]), "embeddings": vectors.tolist()}
    )


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


async def _point_alias(state: ServingState, alias: str, model_id: str) -> dict[str, Any]:
    """Load the model (so a broken one is refused before any traffic moves), then move the alias."""
    model = await asyncio.to_thread(state.catalog.get, model_id)
    loaded = await state.predictor.load(model.id)
    record = await asyncio.to_thread(state.catalog.store.deploy, alias, model.id)
    logger.info("alias %s -> model %s", alias, model.id)
    return {"deployment": _deployment_view(record), "model": loaded}


async def _alias_model(state: ServingState, alias: str) -> ServedModel:
    return await asyncio.to_thread(state.catalog.for_alias, alias)


# -- routes by model id --------------------------------------------------------------------------


@router.post("/v1/models/{model_id}/predict")
async def predict(model_id: str, body: PredictRequest, state: State, _rid: RequestId) -> JSONResponse:
    """Click probabilities (and logits) of rows of named features."""
    return await _predict(state, state.catalog.get(model_id), body)


@router.post("/v1/models/{model_id}/rank")
async def rank(model_id: str, body: RankRequest, state: State, _rid: RequestId) -> JSONResponse:
    """The ``k`` best candidates for one context, best first, with their index in ``candidates``."""
    return await _rank(state, state.catalog.get(model_id), body)


@router.post("/v1/models/{model_id}/embeddings/{side}")
async def embeddings(
    model_id: str, side: Side, body: PredictRequest, state: State, _rid: RequestId
) -> JSONResponse:
    """User vectors (from user- and context-side features) or item vectors of a two-tower model."""
    return await _embeddings(state, state.catalog.get(model_id), side, body)


@router.post("/v1/models/{model_id}/deploy")
async def deploy(
    model_id: str, state: State, _rid: RequestId, body: DeployRequest | None = None
) -> dict[str, Any]:
    """Load the model on the serving replicas; with ``alias``, point the alias at it (recorded)."""
    if body is not None and body.alias is not None:
        return await _point_alias(state, body.alias, model_id)
    model = await asyncio.to_thread(state.catalog.get, model_id)
    loaded = await state.predictor.load(model.id)
    logger.info("deployed model %s", model.id)
    return {"deployment": None, "model": loaded}


# -- routes by alias -----------------------------------------------------------------------------


@router.get("/v1/endpoints/{alias}")
async def endpoint(alias: str, state: State, _rid: RequestId) -> dict[str, Any]:
    """The model the alias serves now and the alias's history, oldest first."""
    active = await asyncio.to_thread(state.catalog.active, alias)
    history = await asyncio.to_thread(state.catalog.store.deployment_history, alias)
    return {
        "alias": alias,
        "model_id": active.model_id,
        "active": _deployment_view(active),
        "history": [_deployment_view(d) for d in history],
    }


@router.post("/v1/endpoints/{alias}/predict")
async def alias_predict(alias: str, body: PredictRequest, state: State, _rid: RequestId) -> JSONResponse:
    """``predict`` with the model the alias serves."""
    return await _predict(state, await _alias_model(state, alias), body)


@router.post("/v1/endpoints/{alias}/rank")
async def alias_rank(alias: str, body: RankRequest, state: State, _rid: RequestId) -> JSONResponse:
    """``rank`` with the model the alias serves."""
    return await _rank(state, await _alias_model(state, alias), body)


@router.post("/v1/endpoints/{alias}/embeddings/{side}")
async def alias_embeddings(
    alias: str, side: Side, body: PredictRequest, state: State, _rid: RequestId
) -> JSONResponse:
    """``embeddings`` with the model the alias serves."""
    return await _embeddings(state, await _alias_model(state, alias), side, body)


@router.post("/v1/endpoints/{alias}/promote")
async def promote(alias: str, body: PromoteRequest, state: State, _rid: RequestId) -> dict[str, Any]:
    """Point the alias at another model (loaded first); the previous one stays in its history."""
    return await _point_alias(state, alias, body.model_id)


@router.post("/v1/endpoints/{alias}/rollback")
async def rollback(alias: str, state: State, _rid: RequestId) -> dict[str, Any]:
    """Put the alias back on the model it served before the last promote (409 if there was none)."""
    record = await asyncio.to_thread(state.catalog.store.rollback, alias)
    logger.info("alias %s rolled back to model %s", alias, record.model_id)
    return {"deployment": _deployment_view(record)}
