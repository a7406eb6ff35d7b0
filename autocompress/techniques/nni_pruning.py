"""Structured pruning of hidden units scored by NNI's importance criteria (the optional extra ``nni``).

NNI 3.0 scores the output units of each chosen Linear (L1 or L2 norm of its weight rows, FPGM, or
first-order Taylor importance gathered over a few training steps) and returns masks. NNI's own
ModelSpeedup crashes on torch 2.13 (docs/dependencies.md), so the masked units are removed here
with Torch-Pruning's layer primitives: the pruned Linear's rows and the matching input columns of
the Linear that reads them. No mask or zero stays behind.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# Optional packages this technique needs beyond the base install.
REQUIRES = ("nni",)

# criterion -> NNI pruner class in nni.compression.pruning
CRITERIA = {"l1": "L1NormPruner", "l2": "L2NormPruner", "fpgm": "FPGMPruner", "taylor": "TaylorPruner"}


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """Which NNI criterion ranks the hidden units, how many go, in which layers, how long to fine-tune."""

    name: ClassVar[str] = "nni_pruning"
    level: ClassVar[Level] = "torch"

    criterion: str = param(
        "l1",
        Categorical(list(CRITERIA)),
        "NNI importance of a unit: l1 / l2 norm of its weights, fpgm (geometric median), taylor (gradients)",
    )
    sparse_ratio: float = param(
        0.5, FloatRange(0.1, 0.7), "fraction of each pruned layer's output units that is removed"
    )
    layers: tuple[str, ...] = param(
        (), None, "names of the hidden Linear layers to prune (e.g. 'top.0'); empty: every prunable one"
    )
    taylor_steps: int = param(
        20, IntRange(5, 50), "training steps whose gradients score the units (criterion taylor only)"
    )
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of fine-tuning after pruning (0: none)")

    def check(self) -> None:
        if self.criterion not in CRITERIA:
            raise self.fail("criterion", f"{self.criterion!r} is not one of {list(CRITERIA)}")
        if (
            isinstance(self.sparse_ratio, bool)
            or not isinstance(self.sparse_ratio, int | float)
            or not 0.0 < self.sparse_ratio < 1.0
        ):
            raise self.fail("sparse_ratio", f"must be in (0, 1), got {self.sparse_ratio!r}")
        for field_name in ("taylor_steps", "finetune_epochs"):
            value = getattr(self, field_name)
            minimum = 1 if field_name == "taylor_steps" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise self.fail(field_name, f"must be an integer >= {minimum}, got {value!r}")


def prunable_layers(model: nn.Module) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """Each Linear whose outputs reach only the next Linear of its Sequential, through element-wise ops.

    Maps the layer's name to ``(layer, consumer)``: removing output units of ``layer`` means
    removing the same input columns of ``consumer`` and nothing else (an MLP's hidden layers).
    """
    from torch import nn

    elementwise = (
        nn.ReLU,
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.ELU,
        nn.Dropout,
        nn.Identity,
    )
    found: dict[str, tuple[nn.Linear, nn.Linear]] = {}
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        children = list(seq.named_children())
        for i, (child_name, layer) in enumerate(children):
            if not isinstance(layer, nn.Linear):
                continue
            for _, later in children[i + 1 :]:
                if isinstance(later, nn.Linear):
                    found[f"{seq_name}.{child_name}" if seq_name else child_name] = (layer, later)
                    break
                if not isinstance(later, elementwise):
                    break
    return found


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Score units with NNI on a copy of ``model``, remove the masked ones from ``model``, then fine-tune."""
    import torch_pruning as tp

    prunable = prunable_layers(model)
    config.check_names("layers", config.layers, prunable)
    names = list(dict.fromkeys(config.layers or prunable))
    if not names:
        log.warning("nni_pruning: the model has no prunable hidden Linear layer; nothing pruned")
        return model
    masks = nni_masks(model, names, config, ctx)
    for name in names:
        layer, consumer = prunable[name]
        rows = masks[name]["weight"].detach().cpu().flatten(1).abs().sum(dim=1)
        removed = [int(i) for i in (rows == 0).nonzero().flatten()]
        if len(removed) >= layer.out_features:  # never empty a layer
            removed = removed[1:]
        units = layer.out_features
        tp.prune_linear_out_channels(layer, removed)
        tp.prune_linear_in_channels(consumer, removed)
        log.info("nni_pruning: %s %d -> %d units (%s)", name, units, layer.out_features, config.criterion)
    ctx.finetune(model, config.finetune_epochs)
    return model


def nni_masks(
    model: nn.Module, names: list[str], config: Config, ctx: TechniqueContext
) -> Mapping[str, Mapping[str, torch.Tensor]]:
    """NNI's masks ``{layer: {"weight": [out, in], "bias": [out]}}`` for ``names``, computed on a copy."""
    try:
        from nni.compression import pruning as nni_pruning
    except ImportError as exc:
        raise AutocompressError(
            "nni_pruning: needs the optional extra 'nni' (pip install 'autocompress[nni]'), "
            f"which is not importable here: {exc}"
        ) from None
    scored = copy.deepcopy(model)
    config_list = [{"op_names": names, "sparse_ratio": float(config.sparse_ratio)}]
    pruner_class = getattr(nni_pruning, CRITERIA[config.criterion])
    if config.criterion == "taylor":
        pruner = pruner_class(
            scored, config_list, _taylor_evaluator(scored, ctx), training_steps=config.taylor_steps
        )
    else:
        pruner = pruner_class(scored, config_list)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    missing = sorted(set(names) - set(masks))
    if missing:
        raise AutocompressError(f"nni_pruning: NNI returned no mask for layer(s) {missing}")
    return masks


def _taylor_evaluator(scored: nn.Module, ctx: TechniqueContext) -> Any:
    """An NNI TorchEvaluator that runs our batches of ``ctx.train`` through the model with BCE loss."""
    import nni
    import torch
    import torch.nn.functional as F
    from nni.compression import TorchEvaluator

    from autocompress.train import to_tensors

    if ctx.train is None:
        raise AutocompressError("nni_pruning.criterion: 'taylor' needs training data (ctx.train is None)")
    train = ctx.train
    batch_size = ctx.train_config.batch_size

    def training_step(batch: Any, model: nn.Module) -> torch.Tensor:
        features, labels = batch
        return F.binary_cross_entropy_with_logits(model(features).float(), labels)

    def training(
        model: nn.Module,
        optimizers: Any,
        training_step: Any,
        lr_schedulers: Any = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
    ) -> None:
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        device = next(model.parameters()).device
        features = to_tensors(train.features, device)
        labels = torch.from_numpy(train.labels.astype("float32")).to(device)
        generator = torch.Generator().manual_seed(ctx.train_config.seed)
        steps, total = 0, max_steps or 1
        model.train()
        while steps < total:
            order = torch.randperm(len(labels), generator=generator).to(device)
            for start in range(0, len(labels), batch_size):
                index = order[start : start + batch_size]
                batch = ({k: v.index_select(0, index) for k, v in features.items()}, labels[index])
                optimizer.zero_grad()
                training_step(batch, model).backward()
                optimizer.step()
                steps += 1
                if steps >= total:
                    break

    optimizer = nni.trace(torch.optim.Adam)(scored.parameters(), lr=ctx.train_config.lr)
    return TorchEvaluator(training, optimizer, training_step)


EXAMPLES = [{"criterion": "taylor", "sparse_ratio": 0.3, "taylor_steps": 5, "finetune_epochs": 0}]
INVALID = [
    ({"criterion": "random"}, "nni_pruning.criterion: 'random' is not one of ['l1', 'l2', 'fpgm', 'taylor']"),
    ({"sparse_ratio": 1.0}, "nni_pruning.sparse_ratio: must be in (0, 1)"),
    ({"taylor_steps": 0}, "nni_pruning.taylor_steps: must be an integer >= 1"),
    ({"layers": ["top.4"]}, "nni_pruning.layers: unknown name(s) ['top.4']; the model has ['bottom.0'"),
]
