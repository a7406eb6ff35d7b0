"""ModelBatcher: requests for one model that queue up while a run is out go as one run, rows intact."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from autocompress.serving import BatchPolicy, ModelBatcher


class Model:
    """Stands in for a session run: logit of a row = its ``x``; records each run's row count."""

    def __init__(self, seconds: float = 0.01, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls: list[int] = []
        self.out = 0
        self.most_out = 0

    async def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        self.calls.append(len(features["x"]))
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        await asyncio.sleep(self.seconds)
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
    # the first `in_flight` went straight out, one a call; the rest queued meanwhile and went
    # 8 requests a call, `in_flight` calls out at a time
    rest = sizes[in_flight:]
    assert model.calls == sizes[:in_flight] + [sum(rest[i : i + 8]) for i in range(0, len(rest), 8)]
    assert batcher.runs == in_flight + 3
    assert model.most_out == in_flight


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
