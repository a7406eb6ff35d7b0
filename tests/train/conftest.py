"""Fixtures for the train tests: one thread for tiny models, and the tiny click task's splits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from autocompress.data.table import Table
from tests.train.tiny_click import make_click_table


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def click_splits() -> tuple[Table, Table]:
    train, _ = make_click_table(3000, seed=1)
    valid, _ = make_click_table(1000, seed=2)
    return train, valid
