"""A few optimizer steps on a tiny learnable task lower the loss of every family."""

from __future__ import annotations

import pytest
import torch

from autocompress.models import FAMILIES, build
from tests.models.tiny import make_schema, small_arch, to_tensors


@pytest.mark.parametrize("family", FAMILIES)
def test_few_steps_reduce_the_loss(family: str) -> None:
    schema = make_schema()
    batch = to_tensors(schema.example_batch(256, seed=0))
    # Clicked when user and item ids have the same parity, or the price is high: needs the
    # user-item interaction and a dense feature, which every family can represent.
    same_parity = (batch["user_id"] % 2) == (batch["item_id"] % 2)
    labels = (same_parity | (batch["price"] > 1.0)).float()
    torch.manual_seed(0)
    model = build(family, schema, small_arch(family))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(model(batch), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[:: len(losses) // 4]
