"""PredictionService without Ray or HTTP: one answer for every payload form; batches; aliases move safely."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from autocompress.export import create_session, feed
from autocompress.serving import (
    BatchPolicy,
    LocalPredictor,
    ModelCatalog,
    ModelRunner,
    PredictionService,
    keep_aliases_fresh,
    reuse_opened,
)
from autocompress.spec import Target
from autocompress.store import NotFoundError
from tests.serving.conftest import Registry


@pytest.fixture
def local(registry: Registry) -> Iterator[LocalPredictor]:
    predictor = LocalPredictor(ModelCatalog(registry.store, registry.root))
    yield predictor
    predictor.close()


def _reference(path: str, batch: dict[str, np.ndarray]) -> np.ndarray:
    session = create_session(path, Target())
    return np.asarray(session.run(None, feed(session, batch))[0], dtype=np.float32).reshape(-1)


def _rows(registry: Registry, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values())))
    return [{name: batch[name][i].tolist() for name in registry.schema.feature_names} for i in range(n)]


def test_rows_columns_and_tensors_give_the_same_scores(registry: Registry, local: LocalPredictor) -> None:
    record = registry.register("dlrm")
    batch = registry.schema.example_batch(5, seed=11)
    rows = _rows(registry, batch)
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    dense = {d.name for d in registry.schema.dense}
    tensors = [
        {
            "name": n,
            "shape": list(batch[n].shape),
            "datatype": "FP32" if n in dense else "INT64",
            "data": batch[n].tolist(),
        }
        for n in registry.schema.feature_names
    ]
    service = PredictionService(local.open)

    async def answers() -> list[list[float]]:
        runner = await service.runner(record.id)
        by_rows = await service.predict(runner, {"rows": rows})
        by_columns = await service.predict(runner, {"columns": columns})
        by_tensors = await service.infer(runner, "shop", {"inputs": tensors, "outputs": [{"name": "logits"}]})
        assert by_tensors["model_name"] == "shop" and by_tensors["model_version"] == record.id
        return [by_rows["logits"], by_columns["logits"], by_tensors["outputs"][0]["data"]]

    try:
        forms = asyncio.run(answers())
    finally:
        service.close()
    expected = _reference(record.path, batch)
    for got in forms:
        np.testing.assert_array_equal(got, forms[0])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_for_a_model_run_together_and_answers_stay_exact(
    registry: Registry, local: LocalPredictor, batching: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = registry.register("dlrm")
    runs: list[int] = []
    logits = ModelRunner.logits

    def counted(self: ModelRunner, features: dict[str, np.ndarray]) -> np.ndarray:
        runs.append(len(next(iter(features.values()))))
        return logits(self, features)

    monkeypatch.setattr(ModelRunner, "logits", counted)
    service = PredictionService(local.open, batching=BatchPolicy(enabled=batching, max_batch_size=8))
    batches = [registry.schema.example_batch(1 + i % 3, seed=i) for i in range(20)]

    async def answers() -> list[dict[str, Any]]:
        runner = await service.runner(record.id)
        return list(
            await asyncio.gather(*(service.predict(runner, {"rows": _rows(registry, b)}) for b in batches))
        )

    try:
        got = asyncio.run(answers())
    finally:
        service.close()
    for batch, answer in zip(batches, got, strict=True):
        np.testing.assert_allclose(answer["logits"], _reference(record.path, batch), rtol=0, atol=1e-6)
    assert sum(runs) == sum(1 + i % 3 for i in range(20))
    if batching:  # the first went alone; the rest queued while it ran and went 8 requests a run
        assert len(runs) == 1 + 3, runs
    else:
        assert len(runs) == 20


def test_an_alias_moves_once_its_model_opens_and_a_broken_one_leaves_it(
    registry: Registry, local: LocalPredictor
) -> None:
    first, second = registry.register("dlrm"), registry.register("dlrm", seed=1)
    outside = registry.store.register_model("outside", "/etc/hostname", registry.schema.to_dict(), {})
    service = PredictionService(local.open)

    async def run() -> None:
        assert await service.sync_aliases({"shop": first.id, "ads": second.id}) == ["shop", "ads"]
        assert (await service.for_alias("shop")).model.id == first.id
        opened = set(local._runners)
        assert {first.id, second.id} <= opened  # opened before the aliases pointed at them
        assert await service.sync_aliases({"shop": outside.id, "ads": second.id}) == []
        assert (await service.for_alias("shop")).model.id == first.id  # stays on the model that works
        assert await service.sync_aliases({"shop": second.id}) == ["shop"]
        read_at = time.monotonic()  # a read begun now, then the alias pointed here (a promote in process)
        service.aliases.point("shop", first.id)
        assert await service.sync_aliases({"shop": second.id}, read_at) == []  # the older read loses
        assert service.aliases.get("shop") == first.id
        assert await service.sync_aliases({"shop": second.id}, time.monotonic()) == ["shop"]
        assert (await service.for_name("shop")).model.id == second.id
        with pytest.raises(NotFoundError, match="'ads' has no active deployment"):
            await service.for_alias("ads")
        assert (await service.for_name(first.id)).model.id == first.id  # a model id is a name too
        with pytest.raises(NotFoundError, match="no alias or model named 'nobody'"):
            await service.for_name("nobody")

    try:
        asyncio.run(run())
    finally:
        service.close()


def test_the_alias_refresh_keeps_the_last_table_while_the_store_is_away() -> None:
    reads: list[dict[str, str] | Exception] = [{"shop": "a"}, RuntimeError("database away"), {"shop": "b"}]
    applied: list[dict[str, str]] = []

    def read() -> dict[str, str]:
        answer = reads.pop(0) if reads else {"shop": "b"}
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def apply(table: Any, _read_at: float) -> None:
        applied.append(dict(table))

    async def run() -> None:
        task = asyncio.create_task(keep_aliases_fresh(read, apply, 0.01))
        while len(applied) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), 10))
    assert applied[:3] == [{"shop": "a"}, {"shop": "b"}, {"shop": "b"}]  # the failed read applied nothing


def test_a_request_alone_runs_on_the_event_loop_and_company_goes_to_the_session_thread(
    registry: Registry, local: LocalPredictor
) -> None:
    import threading

    record = registry.register("dlrm")
    handed: list[int] = []  # rows of each run on the session thread (not the event loop's)
    service = PredictionService(local.open, batching=BatchPolicy(max_batch_size=8))
    one = {"rows": _rows(registry, registry.schema.example_batch(1, seed=1))}
    big = {"rows": _rows(registry, registry.schema.example_batch(40, seed=2))}

    async def run() -> None:
        runner = await service.runner(record.id)
        logits, loop_thread = runner.logits, threading.current_thread()

        def counted(features: dict[str, Any]) -> Any:
            if threading.current_thread() is not loop_thread:
                handed.append(len(next(iter(features.values()))))
            return logits(features)

        runner.logits = counted  # type: ignore[method-assign]
        await service.predict(runner, one)
        assert handed == []  # alone: no hand-off to the thread
        await asyncio.gather(*(service.predict(runner, one) for _ in range(6)), service.predict(runner, big))
        assert 40 in handed  # in company: the thread; 40 rows >= 8 went as a batch of its own
        assert sum(handed) == 46

    try:
        asyncio.run(run())
    finally:
        service.close()


def test_an_opened_model_is_reused_for_a_window_and_never_kept_alive(
    registry: Registry, local: LocalPredictor
) -> None:
    import gc

    first, second = registry.register("dlrm"), registry.register("dlrm", seed=1)
    asked: list[str] = []

    async def source(model_id: str) -> ModelRunner:
        asked.append(model_id)
        return await local.open(model_id)

    async def run() -> None:
        runners = reuse_opened(source, within_s=0.2)
        opened = [await runners(first.id) for _ in range(50)] + [await runners(second.id)]
        assert asked == [first.id, second.id]  # once per model within the window
        assert all(r is opened[0] for r in opened[:50]) and opened[50].model.id == second.id
        await asyncio.sleep(0.25)
        assert (await runners(first.id)) is opened[0] and asked[-1] == first.id  # asked again after it

        local.close()  # the source closes its models (an LRU eviction): the window holds them weakly
        del opened
        gc.collect()
        assert (await runners(first.id)).model.id == first.id and asked[-1] == first.id  # reopened
        assert len(asked) == 4

    asyncio.run(run())
