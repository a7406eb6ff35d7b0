"""ModelBatcher: requests for one model that queue up while a run is out go as one run, rows intact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from autocompress.serving import BatchPolicy, ModelBatcher


class Model:
    """Stands in for a session on one thread: runs wait their turn, then take their inputs.

    Logit of a row = its ``x``; records each run's row count and how many runs were out at once.
    """

    def __init__(self, seconds: float = 0.01, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls: list[int] = []
        self.out = 0
        self.most_out = 0
        self.thread = asyncio.Lock()

    async def __call__(self, take: Callable[[], dict[str, np.ndarray]]) -> np.ndarray:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            async with self.thread:
                features = take()
                self.calls.append(len(features["x"]))
                await asyncio.sleep(self.seconds)
        finally:
            self.out -= 1
        if self.fail:
            raise RuntimeError("the session said no")
        return features["x"].astype(np.float32) * 2


def _request(i: int, rows: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(rows, dtype=np.int64) + 100 * i, "y": np.full((rows, 3), i, dtype=np.int64)}


def test_a_request_alone_goes_alone() -> None:
    model = Model()
    batcher = ModelBatcher(model)

    async def run() -> list[np.ndarray]:
        return [await batcher.logits(_request(i, 2)) for i in range(3)]

    answers = asyncio.run(run())
    assert model.calls == [2, 2, 2]
    for i, got in enumerate(answers):
        np.testing.assert_array_equal(got, (np.arange(2) + 100 * i) * 2)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_requests_that_queue_go_as_one_call_and_get_their_own_rows(in_flight: int) -> None:
    model = Model()
    batcher = ModelBatcher(model, max_batch_size=8, max_in_flight=in_flight)
    sizes = [1 + i % 3 for i in range(20)]

    async def run() -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.logits(_request(i, n)) for i, n in enumerate(sizes))))

    answers = asyncio.run(run())
    for i, (n, got) in enumerate(zip(sizes, answers, strict=True)):
        np.testing.assert_array_equal(got, (np.arange(n) + 100 * i) * 2)
    assert sum(model.calls) == sum(sizes)
    # the first went straight out alone; the rest queued meanwhile and went 8 requests a call
    rest = sizes[1:]
    assert model.calls == sizes[:1] + [sum(rest[i : i + 8]) for i in range(0, len(rest), 8)]
    assert batcher.runs == 1 + 3
    assert model.most_out == in_flight


def test_a_run_takes_its_rows_when_the_thread_is_free_for_it() -> None:
    """Two runs out: the second waits for the session thread, then takes what queued meanwhile.

    Taken when sent, the requests that arrived during the first batched run would have gone as
    two runs (those already queued when the second run was sent, then the late ones).
    """
    model = Model(seconds=0.1)
    batcher = ModelBatcher(model, max_batch_size=32, max_in_flight=2)

    async def run() -> None:
        async def at(delay: float, i: int) -> np.ndarray:
            await asyncio.sleep(delay)
            return await batcher.logits(_request(i, 1))

        # 0 alone; 1-3 while it runs (one run); 4-6 while that one runs, 7-9 a little later,
        # both groups before the thread is free: one run for the six
        delays = [0.0, 0.02, 0.02, 0.02, 0.13, 0.13, 0.13, 0.16, 0.16, 0.16]
        answers = await asyncio.gather(*(at(d, i) for i, d in enumerate(delays)))
        for i, got in enumerate(answers):
            np.testing.assert_array_equal(got, [200.0 * i])

    asyncio.run(run())
    assert model.calls == [1, 3, 6]


def test_the_wait_timeout_fills_a_batch() -> None:
    model = Model(seconds=0.001)
    batcher = ModelBatcher(model, max_batch_size=4, batch_wait_timeout_s=0.05)

    async def run() -> None:
        async def late(i: int) -> np.ndarray:
            await asyncio.sleep(0.01 * i)
            return await batcher.logits(_request(i, 1))

        await asyncio.gather(*(late(i) for i in range(4)))

    asyncio.run(run())
    assert model.calls == [4]


def test_a_failed_call_fails_every_request_it_carried_and_the_next_ones_still_go() -> None:
    model = Model(fail=True)
    batcher = ModelBatcher(model, max_batch_size=8)

    async def run() -> list[object]:
        return list(
            await asyncio.gather(*(batcher.logits(_request(i, 1)) for i in range(5)), return_exceptions=True)
        )

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) and "said no" in str(r) for r in results)
    model.fail = False
    np.testing.assert_array_equal(asyncio.run(batcher.logits(_request(7, 1))), [1400.0])


def test_the_batching_user_config_is_read_strictly() -> None:
    from autocompress.errors import AutocompressError

    assert BatchPolicy.from_user_config({}) == BatchPolicy(True, 32, 0.0)
    policy = BatchPolicy.from_user_config(
        {"batching": False, "max_batch_size": 8, "batch_wait_timeout_s": 0.002}
    )
    assert policy == BatchPolicy(False, 8, 0.002)
    assert BatchPolicy.from_user_config(policy.user_config()) == policy
    with pytest.raises(AutocompressError, match=r"user_config: unknown field\(s\) \['batch_size'\]; allowed"):
        BatchPolicy.from_user_config({"batch_size": 8})
