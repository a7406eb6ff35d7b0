"""The serving benchmark's load client (``benchmarks/serve_load.py``) against a real uvicorn server.

What its figures rest on: a request counts as succeeded only when answered 200, a connection the
server closes is opened again, a retried request counts once, a late or unframed answer fails the
request instead of being read as the next one's.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.serve_load import HttpClient, http_load
from tests.api.conftest import serving


def _app(seen: Counter[str], connections: set[int]) -> Starlette:
    async def predict(request: Request) -> Response:
        body = await request.json()
        seen[body["row"]] += 1
        await asyncio.sleep(body.get("sleep", 0))
        assert request.client is not None
        connections.add(request.client.port)
        headers = {"connection": "close"} if body["row"] == "closing" else None
        return JSONResponse({"model_id": f"model-{body['row']}"}, headers=headers)

    async def flaky(request: Request) -> Response:
        seen["flaky"] += 1
        return JSONResponse({"model_id": "m"}, status_code=200 if seen["flaky"] % 3 == 0 else 503)

    async def chunked(request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            yield b'{"model_id": '
            yield b'"m"}'

        return StreamingResponse(parts(), media_type="application/json")

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/flaky", flaky, methods=["POST"]),
        Route("/chunked", chunked, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Counter[str], set[int]]]:
    seen: Counter[str] = Counter()
    connections: set[int] = set()
    with serving(_app(seen, connections)) as url:
        yield url, seen, connections


def test_every_request_is_answered_on_a_connection_per_client(
    server: tuple[str, Counter[str], set[int]],
) -> None:
    url, seen, connections = server
    seen.clear(), connections.clear()
    bodies = [json.dumps({"row": name}).encode() for name in ("a", "b", "c", "d")]
    result = asyncio.run(http_load(f"{url}/predict", bodies, 4, 40, 30.0, observe=True))

    assert (result.succeeded, result.failed, result.retried) == (40, 0, 0)
    assert seen == {"a": 10, "b": 10, "c": 10, "d": 10}  # round-robin, each body read whole
    assert sorted({model for _, model in result.models_seen}) == ["model-a", "model-b", "model-c", "model-d"]
    assert len(connections) == 4  # kept alive: one connection per client, not one per request
    assert len(result.latencies_ms) == 40 and min(result.latencies_ms) > 0


def test_a_connection_the_server_closes_is_opened_again(server: tuple[str, Counter[str], set[int]]) -> None:
    url, seen, connections = server
    seen.clear(), connections.clear()
    result = asyncio.run(http_load(f"{url}/predict", [b'{"row": "closing"}'], 1, 5, 30.0))

    assert (result.succeeded, result.failed) == (5, 0)
    assert len(connections) == 5  # the server said "connection: close" after each answer


def test_a_refused_request_fails_or_is_retried_and_counts_once(
    server: tuple[str, Counter[str], set[int]],
) -> None:
    url, seen, _ = server
    seen.clear()
    plain = asyncio.run(http_load(f"{url}/flaky", [b"{}"], 1, 3, 30.0))
    assert (plain.succeeded, plain.failed) == (1, 2)  # 503, 503, 200

    retried = asyncio.run(http_load(f"{url}/flaky", [b"{}"], 1, 2, 30.0, retries=True))
    assert (retried.succeeded, retried.failed, retried.retried) == (2, 0, 4)  # each after two 503s
    assert seen["flaky"] == 9


def test_a_late_or_unframed_answer_fails_the_request_and_is_never_read_as_the_next_ones(
    server: tuple[str, Counter[str], set[int]],
) -> None:
    url, _, _ = server

    async def late_then_next() -> tuple[int, bytes]:
        client = HttpClient(f"{url}/predict", timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await client.post(b'{"row": "late", "sleep": 0.5}')
        return await client.post(b'{"row": "next"}')  # the late answer comes meanwhile

    assert asyncio.run(late_then_next()) == (200, b'{"model_id":"model-next"}')

    async def unframed() -> None:
        client = HttpClient(f"{url}/chunked")
        for _ in range(2):
            with pytest.raises(ConnectionError, match="without content-length"):
                await client.post(b"{}")

    asyncio.run(unframed())
    with pytest.raises(ValueError, match="url: only http"):
        HttpClient("https://127.0.0.1/predict")
