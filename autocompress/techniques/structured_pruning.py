"""Structured pruning of hidden Linear units with Torch-Pruning: whole channels are removed, not masked.

Torch-Pruning's DepGraph traces the model and groups every tensor slice that must go with an
output unit (the unit's weight row and bias, the next layer's input column), so the MLP hidden
layers, the DIN attention MLP and the low-rank factors of DCN-v2 cross layers shrink together
with the layers that read them. Units are ranked by L1/L2 weight norm or first-order Taylor
importance, per layer or across all chosen layers, and the model is fine-tuned afterwards.

Widths that are part of the model's contract never change: output Linears (one logit or a
tower's ``output_dim``), full-rank cross layers (their width is the input width), and DLRM's
bottom MLP output, which joins the dot interaction at ``embedding_dim``.
"""

from __future__ import annotations

import itertools
import logging
import warnings
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

IMPORTANCES = ("l1", "l2", "taylor")
SCOPES = ("global", "per_layer")
# Labelled rows whose loss gradients score units for Taylor importance, and the batch they go in.
TAYLOR_ROWS = 4096
TAYLOR_BATCH_ROWS = 1024
# Rows of the batch Torch-Pruning traces the model with and the pruned model is checked on.
TRACE_ROWS = 64
# MLPs (by attribute name, per model family) whose output width other parts of the model rely on:
# DLRM's bottom MLP output is one of the vectors of the pairwise dot interaction. (Torch-Pruning
# 1.6 also never finishes building the pruning group of that layer through the interaction.)
FIXED_WIDTH_OUTPUTS: dict[str, tuple[str, ...]] = {"dlrm": ("bottom",)}


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How many hidden units go, how they are ranked, in which layers, and how long to fine-tune."""

    name: ClassVar[str] = "structured_pruning"
    level: ClassVar[Level] = "torch"

    sparse_ratio: float = param(
        0.5, FloatRange(0.1, 0.8), "fraction of the hidden units of the chosen layers that is removed"
    )
    importance: str = param(
        "l1",
        Categorical(list(IMPORTANCES)),
        "how a unit is ranked: l1 / l2 norm of its weights, taylor: |weight x loss gradient|",
    )
    scope: str = param(
        "per_layer",
        Categorical(list(SCOPES)),
        "per_layer: every layer loses sparse_ratio of its units; global: units are ranked across layers",
    )
    layers: tuple[str, ...] = param(
        (), None, "names of the Linear layers to prune (e.g. 'top.0'); empty: every prunable one"
    )
    group_ratios: tuple[tuple[str, float], ...] = param(
        (),
        None,
        "per layer group, its own sparse_ratio: {group: ratio}, a group being the layers whose name "
        "starts with '<group>.' (e.g. bottom, top); per_layer scope only",
    )
    iterative_steps: int = param(
        1, IntRange(1, 3), "prune in this many equal steps, re-ranking (and fine-tuning) after each"
    )
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of fine-tuning after each pruning step")

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_ratios", self.named_pairs("group_ratios", "group", "ratio"))
        super().__post_init__()

    def check(self) -> None:
        if not _is_number(self.sparse_ratio) or not 0.0 <= self.sparse_ratio < 1.0:
            raise self.fail("sparse_ratio", f"must be in [0, 1), got {self.sparse_ratio!r}")
        for group, ratio in self.group_ratios:
            if not _is_number(ratio) or not 0.0 <= ratio < 1.0:
                raise self.fail("group_ratios", f"{group!r}: must be in [0, 1), got {ratio!r}")
        if self.group_ratios and self.scope != "per_layer":
            raise self.fail("group_ratios", f"needs scope per_layer, got scope {self.scope!r}")
        if self.importance not in IMPORTANCES:
            raise self.fail("importance", f"{self.importance!r} is not one of {list(IMPORTANCES)}")
        if self.scope not in SCOPES:
            raise self.fail("scope", f"{self.scope!r} is not one of {list(SCOPES)}")
        if not all(isinstance(name, str) for name in self.layers):
            raise self.fail("layers", f"must be a list of layer names, got {list(self.layers)!r}")
        self.require_int("iterative_steps", 1)
        self.require_int("finetune_epochs", 0)


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Remove the least important hidden units of ``model`` (in place), then fine-tune; returns it."""
    from torch import nn

    batch = _trace_batch(model, ctx)
    graph = dependency_graph(model, batch)
    prunable = prunable_layers(model, graph)
    config.check_names("layers", config.layers, prunable)
    chosen = {name: prunable[name] for name in (config.layers or prunable)}
    groups = dict(config.group_ratios)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    config.check_names("group_ratios", groups, {layer_group(name) for name in linears})
    target = {name: groups.get(layer_group(name), config.sparse_ratio) for name in chosen}
    if not chosen or not any(target.values()):
        log.warning("structured_pruning: nothing to prune (prunable layers: %s)", sorted(prunable))
        return model
    initial = {name: layer.out_features for name, layer in chosen.items()}
    for step in range(1, config.iterative_steps + 1):
        scores = unit_importance(model, graph, chosen, config, ctx)
        if config.scope == "global":
            removed = _global_removals(scores, initial, config.sparse_ratio * step / config.iterative_steps)
        else:
            ratios = {name: ratio * step / config.iterative_steps for name, ratio in target.items()}
            removed = _per_layer_removals(scores, initial, ratios)
        _remove_units(model, graph, chosen, removed, _trace_batch(model, ctx))
        ctx.finetune(model, config.finetune_epochs)
    widths = {name: f"{initial[name]}->{layer.out_features}" for name, layer in chosen.items()}
    log.info("structured_pruning (%s, %s): %s", config.importance, config.scope, widths)
    return model


def dependency_graph(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """Torch-Pruning's DepGraph of ``model``, traced on ``batch`` (our forward takes one dict)."""
    import torch
    import torch_pruning as tp

    # DepGraph follows the autograd graph of one forward pass, so gradients must be on.
    with warnings.catch_warnings(), torch.enable_grad():
        # DeepFM's dense_vectors is a bare Parameter; no group rooted at a chosen layer reaches it.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=batch, forward_fn=lambda module, inputs: module(inputs)
        )


def prunable_layers(model: nn.Module, graph: Any) -> dict[str, nn.Linear]:
    """The Linear layers whose output units can be removed, by module name, in model order.

    Candidates are MLP hidden layers (a Linear followed by a ReLU, except a fixed-width MLP output)
    and the first factor of low-rank DCN-v2 cross layers; a candidate is kept only where DepGraph
    couples each of its units to exactly one input column of other Linears and to nothing else
    (e.g. not DCN-v2's deep MLP output in the "parallel" structure, which it mis-maps).
    """
    return {name: layer for name, layer in _candidates(model).items() if _prunable(graph, layer)}


def unit_importance(
    model: nn.Module, graph: Any, layers: dict[str, nn.Linear], config: Config, ctx: TechniqueContext
) -> dict[str, torch.Tensor]:
    """Importance of every output unit of ``layers`` over its whole DepGraph group (mean-normalised)."""
    import torch
    import torch_pruning as tp

    if config.importance == "taylor":
        scorer: Any = tp.importance.TaylorImportance(normalizer="mean")
        loss_gradients(model, ctx, config, "importance")
    else:
        scorer = tp.importance.MagnitudeImportance(p=1 if config.importance == "l1" else 2, normalizer="mean")
    scores = {}
    for name, layer in layers.items():
        group = graph.get_pruning_group(layer, tp.prune_linear_out_channels, list(range(layer.out_features)))
        scores[name] = torch.nan_to_num(scorer(group).detach().float().cpu(), nan=0.0)
    if config.importance == "taylor":
        model.zero_grad(set_to_none=True)
    return scores


def loss_gradients(model: nn.Module, ctx: TechniqueContext, config: TechniqueConfig, field_name: str) -> None:
    """Leave in each parameter's ``.grad`` the loss gradient on a few labelled rows (for Taylor importance).

    The rows come from ``ctx.train`` (else ``ctx.valid``); the loss is binary cross-entropy on the
    logits, averaged per batch and summed over ``TAYLOR_ROWS // TAYLOR_BATCH_ROWS`` batches.
    """
    import torch
    import torch.nn.functional as F

    from autocompress.train.inference import model_device, to_tensors

    source = ctx.train if ctx.train is not None else ctx.valid
    if source is None:
        raise config.fail(
            field_name, "'taylor' needs labelled data, but the context has no train or valid split"
        )
    device = model_device(model)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for features, labels in source.head(TAYLOR_ROWS).batches(TAYLOR_BATCH_ROWS):
            logits = model(to_tensors(features, device)).reshape(-1).float()
            target = torch.from_numpy(labels).to(device)
            F.binary_cross_entropy_with_logits(logits, target).backward()


def _candidates(model: nn.Module) -> dict[str, nn.Linear]:
    from torch import nn

    from autocompress.models.dcn_v2 import CrossLayer
    from autocompress.models.layers import MLP

    fixed = FIXED_WIDTH_OUTPUTS.get(str(getattr(model, "family", "")), ())
    found: dict[str, nn.Linear] = {}
    for owner, module in model.named_modules():
        if isinstance(module, MLP):
            children = list(module.named_children())
            hidden = [
                (f"{owner}.{child}", layer)
                for (child, layer), (_, after) in itertools.pairwise(children)
                if isinstance(layer, nn.Linear) and isinstance(after, nn.ReLU)
            ]
            if owner in fixed and hidden and isinstance(children[-1][1], nn.ReLU):
                hidden = hidden[:-1]
            found.update(hidden)
        elif isinstance(module, CrossLayer) and isinstance(module.weight, nn.Sequential):
            factor = module.weight[0]  # low rank: Linear(dim, rank) then Linear(rank, dim)
            if isinstance(factor, nn.Linear):
                found[f"{owner}.weight.0"] = factor
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda item: order[item[1]]))


def _prunable(graph: Any, layer: nn.Linear) -> bool:
    """Whether one unit of ``layer`` drags along only itself and one input column of other Linears."""
    import torch_pruning as tp

    if layer.out_features < 2:
        return False
    # Torch-Pruning's stand-ins for element-wise ops, reshapes and concatenations between Linears
    passing = (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.CONCAT)
    group = graph.get_pruning_group(layer, tp.prune_linear_out_channels, [0])
    for dep, idxs in group:
        target, handler = dep.target, dep.handler
        if len(idxs) != 1:
            return False
        if target.module is layer:
            ok = graph.is_out_channel_pruning_fn(handler)
        elif target.type == tp.ops.OPTYPE.LINEAR:
            ok = graph.is_in_channel_pruning_fn(handler)
        else:
            ok = target.type in passing
        if not ok:
            return False
    return True


def layer_group(layer: str) -> str:
    """A layer's group: its name up to the first dot (``top.1`` -> ``top``)."""
    return layer.split(".", 1)[0]


def _per_layer_removals(
    scores: dict[str, torch.Tensor], initial: dict[str, int], ratios: dict[str, float]
) -> dict[str, list[int]]:
    """The least important units of each layer, leaving ``round(initial * (1 - ratio))`` (at least 1)."""
    import torch

    removed = {}
    for name, score in scores.items():
        keep = max(1, round(initial[name] * (1.0 - ratios[name])))
        count = max(0, len(score) - keep)
        removed[name] = sorted(int(i) for i in torch.argsort(score, stable=True)[:count])
    return removed


def _global_removals(
    scores: dict[str, torch.Tensor], initial: dict[str, int], ratio: float
) -> dict[str, list[int]]:
    """The least important units across all layers, never emptying a layer."""
    import torch

    keep_total = max(len(initial), round(sum(initial.values()) * (1.0 - ratio)))
    count = sum(len(s) for s in scores.values()) - keep_total
    names = [name for name, score in scores.items() for _ in range(len(score))]
    units = [i for score in scores.values() for i in range(len(score))]
    remaining = {name: len(score) for name, score in scores.items()}
    removed: dict[str, list[int]] = {name: [] for name in scores}
    for flat in torch.argsort(torch.cat(list(scores.values())), stable=True).tolist():
        if count <= 0:
            break
        name = names[flat]
        if remaining[name] > 1:
            removed[name].append(units[flat])
            remaining[name] -= 1
            count -= 1
    return {name: sorted(units) for name, units in removed.items()}


def _remove_units(
    model: nn.Module,
    graph: Any,
    layers: dict[str, nn.Linear],
    removed: dict[str, list[int]],
    batch: dict[str, torch.Tensor],
) -> None:
    """Physically remove units, checking the result equals the model with those units zeroed.

    A zeroed unit outputs 0 (a Linear row and bias of zeros, then ReLU(0) = 0), so it adds nothing
    downstream: the pruned model must compute exactly what the zeroed one does, which catches any
    slice DepGraph got wrong.
    """
    import torch
    import torch_pruning as tp

    from autocompress.models.layers import MLP

    with torch.no_grad():
        for name, units in removed.items():
            layer = layers[name]
            layer.weight[units] = 0.0
            if layer.bias is not None:
                layer.bias[units] = 0.0
        was_training = model.training
        model.eval()
        expected = model(batch)
        for name, units in removed.items():
            if units:
                graph.get_pruning_group(layers[name], tp.prune_linear_out_channels, units).prune()
        got = model(batch)
        model.train(was_training)
    worst = float((got - expected).abs().max())
    if not worst <= 1e-4 * max(1.0, float(expected.abs().max())):
        raise AutocompressError(
            f"structured_pruning: removing units of {sorted(removed)} changed the model's output by "
            f"{worst:.3g}; Torch-Pruning's dependency graph does not match this model"
        )
    for module in model.modules():
        if isinstance(module, MLP):
            linears = [m for m in module if isinstance(m, torch.nn.Linear)]
            if linears:
                module.out_dim = linears[-1].out_features


def _trace_batch(model: nn.Module, ctx: TechniqueContext) -> dict[str, torch.Tensor]:
    from autocompress.train.inference import model_device, to_tensors

    return to_tensors(ctx.calibration_batch(TRACE_ROWS), model_device(model))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


EXAMPLES = [
    {"sparse_ratio": 0.3, "importance": "taylor", "scope": "global", "finetune_epochs": 0},
    {"importance": "l2", "layers": ["top.0"], "iterative_steps": 2, "finetune_epochs": 0},
    {"group_ratios": {"bottom": 0.25, "top": 0.5}, "finetune_epochs": 0},
]
INVALID = [
    ({"sparse_ratio": 1.0}, "structured_pruning.sparse_ratio: must be in [0, 1), got 1.0"),
    ({"sparse_ratio": -0.1}, "structured_pruning.sparse_ratio: must be in [0, 1), got -0.1"),
    (
        {"importance": "random"},
        "structured_pruning.importance: 'random' is not one of ['l1', 'l2', 'taylor']",
    ),
    ({"scope": "local"}, "structured_pruning.scope: 'local' is not one of ['global', 'per_layer']"),
    ({"iterative_steps": 0}, "structured_pruning.iterative_steps: must be an integer >= 1"),
    ({"finetune_epochs": -1}, "structured_pruning.finetune_epochs: must be an integer >= 0"),
    (
        {"layers": ["no_such_layer"]},
        "structured_pruning.layers: unknown name(s) ['no_such_layer']; the model has ['bottom.0', 'top.0'",
    ),
    ({"layers": ["bottom.2"]}, "structured_pruning.layers: unknown name(s) ['bottom.2']"),
    ({"layers": ["top.4"]}, "structured_pruning.layers: unknown name(s) ['top.4']"),
    ({"group_ratios": {"top": 1.0}}, "structured_pruning.group_ratios: 'top': must be in [0, 1), got 1.0"),
    (
        {"group_ratios": {"top": 0.5}, "scope": "global"},
        "structured_pruning.group_ratios: needs scope per_layer, got scope 'global'",
    ),
    (
        {"group_ratios": {"middle": 0.5}},
        "structured_pruning.group_ratios: unknown name(s) ['middle']; the model has ['bottom', 'top']",
    ),
]
