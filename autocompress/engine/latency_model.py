"""A latency model of the target per (target, family): p50/p95/p99 predicted before a candidate is built.

Latency does not depend on trained weights: a candidate's architecture and the structural part of
its policy (pruned widths, hashed or split tables, narrowed tables, int8 and 4/8-bit operators,
fixed low ranks) fix the ONNX graph it runs. ``candidate_inventory`` writes that graph down
analytically, from the family's ``ArchConfig``, the ``FeatureSchema`` and the policy, as the
Linear layers (with the rows each runs on per example, and whether int8) and the embedding
lookups (positions per example, table width, rows and storage) it will have; ``FEATURES`` are
sums over it (MACs in float and int8, values gathered per storage kind, ...).

The model, per percentile: ``latency = sum_i c_i * feature_i`` with every ``c_i >= 0`` (an
intercept among the features), fitted by non-negative least squares on relative errors (rows
divided by the measured latency), on the measurements the busy check found quiet when there are
enough of them, and refitted once without those it misses by far (a neighbour's load inflating a
figure). It is learned on the target node from real timings
(``calibrate``): candidates sampled from the job's search space are built untrained with the
structural part of their policy (``structural_policy``: no distillation, no fine-tuning, Taylor
ranking replaced by L1, which keeps the same widths), exported and measured at the budget's batch
size with short settings. The fitted model and its measurements are cached as JSON in
``cache_dir``, keyed by where it was measured (the target's Ray resource, else this host), the
target, the family, the schema, the space and the batch size, so a node fits it once.

A structure that weights or data decide after training (a low rank chosen by ``energy``, pruning
ranked across layers, ``exclude_nodes``) is predicted as it stands before that step, and the
prediction is marked ``exact=False``: the search never skips such a candidate on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from autocompress.errors import AutocompressError

if TYPE_CHECKING:
    from autocompress.data.schema import FeatureSchema
    from autocompress.data.table import Dataset
    from autocompress.measure.busy import BusyPolicy
    from autocompress.search.budget import Budget
    from autocompress.search.space import SearchSpace
    from autocompress.spec import Target
    from autocompress.techniques import Policy

__all__ = [
    "FEATURES",
    "LATENCY_MODEL_VERSION",
    "Inventory",
    "LatencyModel",
    "LatencyPrediction",
    "calibrate",
    "calibration_target",
    "candidate_features",
    "candidate_inventory",
    "fit_latency_model",
    "nnls",
    "sample_candidates",
    "structural_policy",
]

log = logging.getLogger(__name__)

LATENCY_MODEL_VERSION = 1
PERCENTILES = (50, 95, 99)
FAMILIES = ("dlrm", "din")
# Calibration measures each candidate for at most this long, after at most this many warm-up runs.
CALIBRATION_MAX_SECONDS = 2.0
CALIBRATION_WARMUP = 10
CALIBRATION_ROUNDS = 9
# A calibration measurement missed by more than this (relative) after the first fit is left out.
OUTLIER_REL_ERROR = 0.5
Storage = Literal["float", "int8", "block8", "block4"]


# -- the analytic inventory of a candidate's graph --------------------------------------------------


@dataclass
class Linear:
    """One Linear of the candidate, named as torch names it (``top.0``, ``embeddings.projections.3``).

    ``rows``: rows it runs on per example (DIN's attention unit runs once per history position; a
    projection once per lookup of its table). ``next``: the Linear reading its output, whose input
    shrinks with it under structured pruning.
    """

    name: str
    in_features: int
    out_features: int
    rows: int = 1
    bias: bool = True
    int8: bool = False
    # of ``rows``, those that stay float under dynamic int8: a projection reading a mean-pooled
    # sequence (ONNX Runtime's quantizer leaves the MatMul after the pooling in float)
    float_rows: int = 0
    prunable: bool = False
    next: str | None = None


@dataclass
class Table:
    """One sparse feature's embedding table: its parts (one, two for quotient-remainder), how read."""

    name: str
    vocab: int
    width: int
    parts: list[tuple[int, int]]  # (rows, width) of each stored table
    kind: Literal["plain", "hashed", "qr"] = "plain"
    storage: list[Storage] = field(default_factory=lambda: ["float"])
    projected: bool = False  # narrowed (mixed dims): a bias-free Linear maps it to embedding_dim


@dataclass
class Lookup:
    """One read of a table per example: ``positions`` ids, mean-pooled to one vector or kept per position."""

    feature: str
    table: str
    positions: int
    pooled: bool


@dataclass
class Inventory:
    """What a candidate's ONNX graph holds, by the numbers that set its latency."""

    family: str
    embedding_dim: int
    linears: dict[str, Linear]
    tables: dict[str, Table]
    lookups: list[Lookup]
    extras: dict[str, float] = field(default_factory=dict)
    exact: bool = True
    notes: list[str] = field(default_factory=list)

    def inexact(self, note: str) -> None:
        """Mark the inventory as a structure that training may still change, saying why."""
        self.exact = False
        self.notes.append(note)


def _mlp(
    linears: dict[str, Linear],
    prefix: str,
    in_dim: int,
    widths: Iterable[int],
    out_dim: int | None,
    *,
    rows: int = 1,
    fixed_output: bool = False,
) -> None:
    """The Linears of an ``MLP`` (Linear, ReLU pairs, then an optional plain Linear to ``out_dim``)."""
    widths = list(widths)
    names = [f"{prefix}.{2 * i}" for i in range(len(widths) + (out_dim is not None))]
    sizes = [*widths, *([out_dim] if out_dim is not None else [])]
    width = in_dim
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        hidden = i < len(widths)
        # structured pruning keeps an MLP's output width when others rely on it (DLRM's bottom)
        prunable = hidden and size >= 2 and not (fixed_output and out_dim is None and i == len(widths) - 1)
        following = names[i + 1] if i + 1 < len(names) else None
        linears[name] = Linear(name, width, size, rows=rows, prunable=prunable, next=following)
        width = size


def _tables(schema: FeatureSchema, embedding_dim: int, dims: Mapping[str, int]) -> dict[str, Table]:
    tables = {}
    for feature in schema.sparse:
        width = dims.get(feature.name, embedding_dim)
        tables[feature.name] = Table(
            feature.name,
            feature.vocab_size,
            width,
            [(feature.vocab_size, width)],
            projected=width != embedding_dim,
        )
    return tables


def _dlrm(schema: FeatureSchema, arch: Any) -> Inventory:
    dim = arch.embedding_dim
    linears: dict[str, Linear] = {}
    lookups = [Lookup(f.name, f.name, f.max_len, f.multi_hot) for f in schema.sparse]
    lookups += [Lookup(s.name, s.shares_embedding_with, s.max_len, True) for s in schema.sequence]
    dense = len(schema.dense)
    if dense:
        _mlp(linears, "bottom", dense, arch.bottom_mlp, None, fixed_output=True)
    n_vectors = (1 if dense else 0) + len(lookups)
    pairs = n_vectors * (n_vectors - 1) // 2
    concat = arch.interaction == "cat" or (not dense and pairs == 0)
    top_in = n_vectors * dim if concat else (dim if dense else 0) + pairs
    _mlp(linears, "top", top_in, arch.top_mlp, 1)
    extras = {"interaction": 0.0 if concat else float(n_vectors * n_vectors * dim)}
    return Inventory("dlrm", dim, linears, _tables(schema, dim, arch.embedding_dims), lookups, extras)


def _din(schema: FeatureSchema, arch: Any) -> Inventory:
    dim = arch.embedding_dim
    history = next(s for s in schema.sequence if arch.history in (None, s.name))
    length = min(history.max_len, arch.history_length or history.max_len)  # the positions attended to
    candidate = schema.sparse_feature(history.shares_embedding_with)
    ids = [*(f.name for f in schema.sparse), *(s.name for s in schema.sequence)]
    other = [n for n in ids if n not in (history.name, candidate.name)]
    lookups = [
        Lookup(history.name, candidate.name, length, False),
        Lookup(candidate.name, candidate.name, candidate.max_len, candidate.multi_hot),
    ]
    for name in other:
        sequence = next((s for s in schema.sequence if s.name == name), None)
        if sequence is not None:
            lookups.append(Lookup(name, sequence.shares_embedding_with, sequence.max_len, True))
        else:
            feature = schema.sparse_feature(name)
            lookups.append(Lookup(name, name, feature.max_len, feature.multi_hot))
    linears: dict[str, Linear] = {}
    _mlp(linears, "attention", 4 * dim, arch.attention_mlp, 1, rows=length)
    _mlp(linears, "mlp", 2 * dim + len(other) * dim + len(schema.dense), arch.mlp, 1)
    extras = {"attention": float(length * 4 * dim)}
    return Inventory("din", dim, linears, _tables(schema, dim, arch.embedding_dims), lookups, extras)


INVENTORIES: dict[str, Callable[[FeatureSchema, Any], Inventory]] = {"dlrm": _dlrm, "din": _din}


@dataclass(frozen=True)
class TableCounts:
    """How many ids of each table training saw at least c times: what frequency hashing keeps.

    ``at_least[table]`` lists ``(c, ids)`` pairs for every distinct count c, highest first;
    computed once from the training split (``from_dataset``) and kept with the model.
    """

    at_least: Mapping[str, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> TableCounts:
        from autocompress.data.schema import FIRST_ID
        from autocompress.techniques.frequency_hashing import id_counts

        out = {}
        for feature in dataset.schema.sparse:
            counts = id_counts(dataset.train, dataset.schema, feature.name)[FIRST_ID:]
            values, number = np.unique(counts[counts > 0], return_counts=True)
            cumulative = np.cumsum(number[::-1])
            out[feature.name] = [(int(v), int(c)) for v, c in zip(values[::-1], cumulative, strict=True)]
        return cls(out)

    def frequent(self, table: str, min_count: int) -> int | None:
        """Ids of ``table`` seen at least ``min_count`` times; None when the table was not counted."""
        pairs = self.at_least.get(table)
        if pairs is None:
            return None
        kept = 0
        for value, ids in pairs:
            if value < min_count:
                break
            kept = ids
        return kept


def _structured_pruning(inv: Inventory, config: Any, counts: TableCounts) -> None:
    from autocompress.techniques.structured_pruning import layer_group

    prunable = {n: layer for n, layer in inv.linears.items() if layer.prunable}
    unknown = sorted(set(config.layers) - set(prunable))
    if unknown:
        raise AutocompressError(f"structured_pruning.layers: unknown name(s) {unknown}")
    if config.scope == "global":
        inv.inexact(
            "structured_pruning: units ranked across layers (scope global) leave widths to the weights"
        )
    groups = dict(config.group_ratios)
    for name in config.layers or list(prunable):
        layer = prunable[name]
        ratio = groups.get(layer_group(name), config.sparse_ratio)
        keep = max(1, round(layer.out_features * (1.0 - ratio)))
        if keep < layer.out_features:
            layer.out_features = keep
            if layer.next is not None:
                inv.linears[layer.next].in_features = keep


def _low_rank(inv: Inventory, config: Any, counts: TableCounts) -> None:
    from autocompress.techniques.low_rank import saves_parameters

    unknown = sorted(set(config.layers) - set(inv.linears))
    if unknown:
        raise AutocompressError(f"low_rank.layers: unknown name(s) {unknown}")
    if config.rank is None:
        inv.inexact(
            "low_rank: the rank that keeps `energy` depends on the trained weights; not factorised here"
        )
        return
    for name in list(config.layers or inv.linears):
        layer = inv.linears[name]
        smaller = min(layer.in_features, layer.out_features)
        rank = min(config.rank, smaller)
        if smaller < config.min_features or not saves_parameters(layer.in_features, layer.out_features, rank):
            continue
        rows, float_rows = layer.rows, layer.float_rows
        down = Linear(
            f"{name}.0", layer.in_features, rank, rows, False, float_rows=float_rows, next=f"{name}.1"
        )
        up = Linear(
            f"{name}.1", rank, layer.out_features, rows, layer.bias, float_rows=float_rows, next=layer.next
        )
        del inv.linears[name]
        inv.linears.update({down.name: down, up.name: up})
        for other in inv.linears.values():
            if other.next == name:
                other.next = down.name


def _frequency_hashing(inv: Inventory, config: Any, counts: TableCounts) -> None:
    from autocompress.data.schema import FIRST_ID
    from autocompress.techniques.frequency_hashing import remap_bytes_per_id

    unknown = sorted(set(config.tables) - set(inv.tables))
    if unknown:
        raise AutocompressError(f"frequency_hashing.tables: unknown name(s) {unknown}")
    buckets = dict(config.table_buckets)
    for table in inv.tables.values():
        wanted = table.name in config.tables if config.tables else table.vocab > config.min_vocab
        if not (wanted or table.name in buckets) or table.kind != "plain":
            continue
        frequent = counts.frequent(table.name, config.min_count)
        if frequent is None:
            inv.inexact(f"frequency_hashing: no id counts of table {table.name}")
            frequent = 0
        rows = FIRST_ID + frequent + buckets.get(table.name, config.hash_buckets)
        if table.vocab * remap_bytes_per_id(rows) + rows * table.width * 4 >= table.vocab * table.width * 4:
            continue
        table.kind, table.parts = "hashed", [(rows, table.width)]


def _mixed_dim_embedding(inv: Inventory, config: Any, counts: TableCounts) -> None:
    from autocompress.techniques.mixed_dim_embedding import mixed_dims

    unknown = sorted(set(config.tables) - set(inv.tables))
    if unknown:
        raise AutocompressError(f"mixed_dim_embedding.tables: unknown name(s) {unknown}")
    dims = mixed_dims({t.name: t.vocab for t in inv.tables.values()}, inv.embedding_dim, config)
    for table in inv.tables.values():
        if (config.tables and table.name not in config.tables) or table.kind != "plain":
            continue
        dim, out = dims[table.name], inv.embedding_dim
        before = table.vocab * table.width + (table.width * out if table.projected else 0)
        if dim >= table.width or table.vocab * dim + dim * out >= before:
            continue
        table.width, table.parts, table.projected = dim, [(table.vocab, dim)], True


def _qr_embedding(inv: Inventory, config: Any, counts: TableCounts) -> None:
    from autocompress.techniques.qr_embedding import qr_shapes

    unknown = sorted(set(config.tables) - set(inv.tables))
    if unknown:
        raise AutocompressError(f"qr_embedding.tables: unknown name(s) {unknown}")
    for table in inv.tables.values():
        wanted = table.name in config.tables if config.tables else table.vocab > config.min_vocab
        if not wanted or table.kind != "plain" or (config.combine == "concat" and table.width < 2):
            continue
        quotient, remainder = qr_shapes(table.vocab, table.width, config.collisions, config.combine)
        if quotient[0] * quotient[1] + remainder[0] * remainder[1] >= table.vocab * table.width:
            continue
        table.kind, table.parts = "qr", [quotient, remainder]
        table.storage = ["float", "float"]


def _embedding_quantization(inv: Inventory, config: Any, counts: TableCounts) -> None:
    overrides = dict(config.table_bits)
    unknown = sorted(set(overrides) - set(inv.tables))
    if unknown:
        raise AutocompressError(f"embedding_quantization.table_bits: unknown name(s) {unknown}")
    for table in inv.tables.values():
        storage: list[Storage] = []
        for (rows, width), now in zip(table.parts, table.storage, strict=True):
            default = config.bits if rows >= config.min_rows else 32
            # a split table is found by its initializers' names, not its feature's
            bits = overrides.get(table.name, default) if table.kind in ("plain", "hashed") else default
            block = config.block_size or max(16, 1 << (width - 1).bit_length())
            blocks = -(-width // block)
            new_bytes = (
                -(-width * bits // 8) + 4 * blocks + (0 if config.symmetric else -(-blocks * bits // 8))
            )
            if now != "float" or bits == 32 or new_bytes >= 4 * width:
                storage.append(now)
            else:
                storage.append("block4" if bits == 4 else "block8")
        table.storage = storage


def _dynamic_int8(inv: Inventory, config: Any, counts: TableCounts) -> None:
    if config.exclude_nodes:
        inv.inexact("dynamic_int8: nodes kept in float by ONNX name are not followed")
    if {"MatMul", "Gemm"} & set(config.op_types):
        for layer in inv.linears.values():
            layer.int8 = True
    if "Gather" in config.op_types:
        for table in inv.tables.values():
            table.storage = ["int8" if s == "float" else s for s in table.storage]


def _no_structure(inv: Inventory, config: Any, counts: TableCounts) -> None:
    """Distillation trains the weights only: the graph stays as it is."""


# technique name -> how it changes the inventory (in policy order, like ``apply_policy``)
RULES: dict[str, Callable[[Inventory, Any, TableCounts], None]] = {
    "distillation": _no_structure,
    "structured_pruning": _structured_pruning,
    "low_rank": _low_rank,
    "frequency_hashing": _frequency_hashing,
    "mixed_dim_embedding": _mixed_dim_embedding,
    "qr_embedding": _qr_embedding,
    "embedding_quantization": _embedding_quantization,
    "dynamic_int8": _dynamic_int8,
}


def candidate_inventory(
    family: str,
    schema: FeatureSchema,
    arch: Mapping[str, Any],
    policy: Policy,
    counts: TableCounts | None = None,
) -> Inventory:
    """The candidate's graph as numbers, from its architecture and policy alone (nothing is built).

    Raises ``AutocompressError`` for a family or technique the model does not describe.
    """
    from autocompress.models import arch_class

    if family not in INVENTORIES:
        raise AutocompressError(
            f"latency model: family {family!r} is not modelled; modelled: {list(FAMILIES)}"
        )
    inv = INVENTORIES[family](schema, arch_class(family).from_dict(arch))
    counts = counts or TableCounts()
    _sync_projections(inv)
    for step in policy.steps:
        if step.name not in RULES:
            raise AutocompressError(
                f"latency model: technique {step.name!r} is not modelled; modelled: {sorted(RULES)}"
            )
        RULES[step.name](inv, step, counts)
        _sync_projections(inv)
    return inv


def _sync_projections(inv: Inventory) -> None:
    """The bias-free Linears mapping narrowed tables up to embedding_dim, run once per lookup row."""
    for i, table in enumerate(inv.tables.values()):
        name = f"embeddings.projections.{i}"
        if not table.projected or f"{name}.0" in inv.linears:  # absent, or factorised by low_rank
            continue
        if name in inv.linears:
            inv.linears[name].in_features = table.width
            continue
        lookups = [lk for lk in inv.lookups if lk.table == table.name]
        rows = sum(lk.positions if not lk.pooled else 1 for lk in lookups)
        pooled = sum(lk.pooled for lk in lookups)
        inv.linears[name] = Linear(
            name, table.width, inv.embedding_dim, rows=rows, bias=False, float_rows=pooled
        )


# -- features ---------------------------------------------------------------------------------------

FEATURES = (
    "intercept",
    "macs_fp32",  # multiply-accumulates of float Linears per example
    "macs_int8",
    "int8_io",  # values (de)quantized around int8 Linears
    "linears_fp32",  # Linear layers (one node or a few each)
    "linears_int8",
    "gathered_float",  # table values gathered per example, by storage
    "gathered_int8",
    "gathered_block",
    "lookups_remapped",  # ids going through a hash remap or a quotient-remainder split
    "gathered_cold",  # float values gathered from tables larger than a cache
    "interaction",  # DLRM's pairwise dot products / DIN's attention inputs, per example
)
COLD_TABLE_BYTES = 8 << 20


def candidate_features(inv: Inventory) -> dict[str, float]:
    """``FEATURES`` of one inventory, per example."""
    f = dict.fromkeys(FEATURES, 0.0)
    f["intercept"] = 1.0
    for layer in inv.linears.values():
        int8_rows = layer.rows - layer.float_rows if layer.int8 else 0
        float_rows = layer.rows - int8_rows
        if int8_rows:
            f["macs_int8"] += int8_rows * layer.in_features * layer.out_features
            f["int8_io"] += int8_rows * (layer.in_features + layer.out_features)
            f["linears_int8"] += 1
        if float_rows:
            f["macs_fp32"] += float_rows * layer.in_features * layer.out_features
            f["linears_fp32"] += 1
    for lookup in inv.lookups:
        table = inv.tables[lookup.table]
        if table.kind != "plain":
            f["lookups_remapped"] += lookup.positions
        for (rows, width), storage in zip(table.parts, table.storage, strict=True):
            values = lookup.positions * width
            key = {"float": "gathered_float", "int8": "gathered_int8"}.get(storage, "gathered_block")
            f[key] += values
            if storage == "float" and rows * width * 4 > COLD_TABLE_BYTES:
                f["gathered_cold"] += values
    f["interaction"] = sum(inv.extras.values())
    return f


def _vector(features: Mapping[str, float]) -> np.ndarray:
    return np.array([float(features[name]) for name in FEATURES])


# -- the regression ---------------------------------------------------------------------------------


def nnls(a: np.ndarray, b: np.ndarray, *, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, ``argmin ||a x - b||`` with ``x >= 0`` (Lawson and Hanson's active set)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    for _ in range(max_iter or 3 * n):
        w = a.T @ (b - a @ x)
        if passive.all() or np.max(np.where(passive, -np.inf, w)) <= tol:
            break
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > tol):
                x = z
                break
            falling = passive & (z <= tol)
            alpha = np.min(x[falling] / (x[falling] - z[falling]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def _fit_relative(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative errors, refitted without outliers."""
    scale = np.maximum(np.abs(features).max(axis=0), 1e-12)  # columns of one magnitude
    keep = np.ones(len(measured), dtype=bool)
    coefficients = np.zeros(features.shape[1])
    for _ in range(2):
        a = features[keep] / scale / measured[keep, None]
        coefficients = nnls(a, np.ones(int(keep.sum()))) / scale
        errors = np.abs(features @ coefficients / measured - 1.0)
        refit = keep & (errors <= OUTLIER_REL_ERROR)
        if refit.sum() < max(len(FEATURES), len(measured) // 2) or refit.sum() == keep.sum():
            break
        keep = refit
    return coefficients


# -- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyPrediction:
    """Predicted milliseconds at one batch size, per percentile; ``exact`` False: training may change it."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    exact: bool = True
    notes: tuple[str, ...] = ()

    def at(self, percentile: int) -> float:
        """Milliseconds at ``percentile`` (50, 95 or 99)."""
        if percentile not in PERCENTILES:
            raise AutocompressError(
                f"percentile {percentile!r} is not predicted; predicted: {list(PERCENTILES)}"
            )
        value: float = getattr(self, f"p{percentile}_ms")
        return value

    def metrics(self) -> dict[str, Any]:
        """The trial metrics that carry it: ``predicted_p{P}_ms_b{B}`` and ``predicted_latency_exact``."""
        out: dict[str, Any] = {f"predicted_p{p}_ms_b{self.batch_size}": self.at(p) for p in PERCENTILES}
        out["predicted_latency_exact"] = self.exact
        return out


@dataclass(frozen=True)
class LatencyModel:
    """A fitted latency model of one (target, family, schema, space) at one batch size.

    ``coefficients[p]`` are the non-negative weights of ``FEATURES`` for percentile p;
    ``counts`` what frequency hashing will keep of each table; ``candidates`` how many measured
    candidates it was fitted on (the quiet ones, when enough were), ``cv_rel_error`` its median
    relative error per percentile in 5-fold cross-validation on them; ``key`` what it was fitted
    for (the cache key).
    """

    family: str
    batch_size: int
    coefficients: Mapping[int, tuple[float, ...]]
    schema: FeatureSchema
    counts: TableCounts = field(default_factory=TableCounts)
    candidates: int = 0
    cv_rel_error: Mapping[int, float] = field(default_factory=dict)
    key: str = ""
    version: int = LATENCY_MODEL_VERSION

    def predict(self, arch: Mapping[str, Any], policy: Policy) -> LatencyPrediction:
        """Predicted latency of the candidate ``(arch, policy)`` at ``batch_size``, before it is built."""
        inv = candidate_inventory(self.family, self.schema, arch, policy, self.counts)
        return self.predict_inventory(inv)

    def predict_inventory(self, inv: Inventory) -> LatencyPrediction:
        """Predicted latency of an inventory (see ``candidate_inventory``)."""
        x = _vector(candidate_features(inv))
        values = {p: float(x @ np.asarray(self.coefficients[p])) for p in PERCENTILES}
        # percentiles of one set of runs never cross
        p95 = max(values[95], values[50])
        p99 = max(values[99], p95)
        return LatencyPrediction(self.batch_size, values[50], p95, p99, inv.exact, tuple(inv.notes))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the cache keeps); ``from_dict`` reads it back."""
        return {
            "version": self.version,
            "family": self.family,
            "batch_size": self.batch_size,
            "features": list(FEATURES),
            "coefficients": {str(p): list(c) for p, c in self.coefficients.items()},
            "schema": self.schema.to_dict(),
            "counts": {t: [list(pair) for pair in pairs] for t, pairs in self.counts.at_least.items()},
            "candidates": self.candidates,
            "cv_rel_error": {str(p): e for p, e in self.cv_rel_error.items()},
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyModel:
        """Strict load: another version or feature set is refused (the model is fitted again)."""
        from autocompress.data.schema import FeatureSchema

        if not isinstance(data, Mapping):
            raise AutocompressError(f"latency model: expected a mapping, got {type(data).__name__}")
        if data.get("version") != LATENCY_MODEL_VERSION:
            raise AutocompressError(
                f"latency model: version {data.get('version')!r} is not supported ({LATENCY_MODEL_VERSION})"
            )
        if list(data.get("features", [])) != list(FEATURES):
            raise AutocompressError("latency model: fitted on other features; fit it again")
        try:
            return cls(
                family=str(data["family"]),
                batch_size=int(data["batch_size"]),
                coefficients={int(p): tuple(float(v) for v in c) for p, c in data["coefficients"].items()},
                schema=FeatureSchema.from_dict(data["schema"]),
                counts=TableCounts(
                    {t: [(int(v), int(n)) for v, n in pairs] for t, pairs in data.get("counts", {}).items()}
                ),
                candidates=int(data.get("candidates", 0)),
                cv_rel_error={int(p): float(e) for p, e in data.get("cv_rel_error", {}).items()},
                key=str(data.get("key", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AutocompressError(f"latency model: malformed ({exc})") from None


def fit_latency_model(
    family: str,
    schema: FeatureSchema,
    batch_size: int,
    rows: Sequence[Mapping[str, Any]],
    counts: TableCounts | None = None,
    *,
    key: str = "",
) -> LatencyModel:
    """Fit a ``LatencyModel`` on measured candidates: rows of ``features`` and ``p{50,95,99}_ms``."""
    if len(rows) < 4:
        raise AutocompressError(f"latency model: needs at least 4 measured candidates, got {len(rows)}")
    quiet = [r for r in rows if not r.get("busy")]
    if len(quiet) >= max(len(FEATURES), len(rows) // 2):
        rows = quiet  # figures taken while the node was busy teach the neighbour's load, not the model's
    x = np.array([_vector(r["features"]) for r in rows])
    coefficients = {}
    cv = {}
    for p in PERCENTILES:
        y = np.array([float(r[f"p{p}_ms"]) for r in rows])
        coefficients[p] = tuple(float(c) for c in _fit_relative(x, y))
        cv[p] = _cross_validated_error(x, y)
    return LatencyModel(
        family=family,
        batch_size=batch_size,
        coefficients=coefficients,
        schema=schema,
        counts=counts or TableCounts(),
        candidates=len(rows),
        cv_rel_error=cv,
        key=key,
    )


def _cross_validated_error(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Median relative error of 5-fold cross-validation (each candidate predicted by a fit without it)."""
    order = np.random.default_rng(0).permutation(len(y))
    errors = []
    for fold in range(min(folds, len(y))):
        held = order[fold::folds]
        train = np.setdiff1d(order, held)
        coefficients = _fit_relative(x[train], y[train])
        errors.extend(np.abs(x[held] @ coefficients / y[held] - 1.0))
    return float(np.median(errors))


# -- calibration on the target ----------------------------------------------------------------------


def structural_policy(policy: Policy) -> Policy:
    """The policy with only its structural part: what fixes a candidate's graph, none of its training.

    Distillation goes, every ``finetune_epochs`` becomes 0 (so no data is trained on), and Taylor
    pruning ranks by L1 instead (per layer, both keep the same number of units).
    """
    from dataclasses import fields

    from autocompress.techniques import Policy

    steps = []
    for step in policy.steps:
        if step.name == "distillation":
            continue
        changes: dict[str, Any] = {}
        if "finetune_epochs" in {f.name for f in fields(step)}:
            changes["finetune_epochs"] = 0
        if step.name == "structured_pruning" and getattr(step, "importance", None) == "taylor":
            changes["importance"] = "l1"
        steps.append(replace(step, **changes) if changes else step)
    return Policy(steps=tuple(steps))


def sample_candidates(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict[str, Any], Policy]]:
    """``n`` distinct candidates drawn uniformly from ``space`` (decoded), each one the model can describe."""
    from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
    from autocompress.search.space import decode

    rng = np.random.default_rng(seed)

    def draw(dist: Distribution) -> Any:
        if isinstance(dist, Categorical):
            return dist.to_dict()["choices"][int(rng.integers(len(dist.choices)))]
        if isinstance(dist, IntRange):
            if dist.log:
                return int(
                    min(
                        dist.high,
                        max(dist.low, round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))),
                    )
                )
            return int(dist.low + dist.step * rng.integers((dist.high - dist.low) // dist.step + 1))
        if isinstance(dist, FloatRange):
            if dist.log:
                return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
            return float(rng.uniform(dist.low, dist.high))
        raise TypeError(f"unknown distribution {dist!r}")

    dims = space.dimensions()
    found: dict[str, tuple[dict[str, Any], Policy]] = {}
    for _ in range(20 * n):
        if len(found) == n:
            break
        flat = {k: draw(v) if isinstance(v, Distribution) else v for k, v in dims.items()}
        arch, policy = decode(space, flat)
        if any(step.name not in RULES for step in policy.steps):
            continue
        signature = json.dumps([arch, structural_policy(policy).to_dict()], sort_keys=True)
        found.setdefault(signature, (arch, policy))
    return list(found.values())


def calibration_target(target: Target, batch_size: int) -> Target:
    """The target at the budget's batch size alone, quick to measure and steady in its tail.

    Short warm-up and time limits; each percentile is the median over ``CALIBRATION_ROUNDS``
    slices of the size of the target's own (``repetitions // rounds`` runs): the statistic the
    job measures, estimated steadily enough to fit a p99 on (with the target's 3 slices, one
    model's p99 measured twice differs by 20-30% at the 90th percentile on a quiet node; 9 halve that).
    """
    per_round = max(1, target.repetitions // target.rounds)
    rounds = max(target.rounds, CALIBRATION_ROUNDS)
    return target.model_copy(
        update={
            "batch_sizes": [batch_size],
            "warmup": min(target.warmup, CALIBRATION_WARMUP),
            "max_seconds": min(target.max_seconds, CALIBRATION_MAX_SECONDS),
            "repetitions": per_round * rounds,
            "rounds": rounds,
        }
    )


def measure_candidate(
    family: str,
    arch: Mapping[str, Any],
    policy: Policy,
    dataset: Dataset,
    target: Target,
    cache_dir: Path,
    *,
    seed: int = 0,
    busy_policy: BusyPolicy | None = None,
) -> dict[str, Any]:
    """Build the candidate untrained with its structural policy, export it, and measure it on ``target``.

    Returns the row a model is fitted on: arch, policy, ``p50_ms`` / ``p95_ms`` / ``p99_ms`` at the
    target's (single) batch size, whether the node was busy, and the seconds spent. A busy figure is
    taken again as ``busy_policy`` says (default: the node's policy with one retry at most, since
    many candidates are measured).
    """
    from autocompress.measure.busy import default_busy_policy
    from autocompress.measure.placement import measure_on_target
    from autocompress.models import build
    from autocompress.techniques import TechniqueContext, apply_policy

    started = time.perf_counter()
    if busy_policy is None:
        default = default_busy_policy()
        busy_policy = replace(default, retries=min(default.retries, 1), wait_seconds=0.5)
    structural = structural_policy(policy)
    with tempfile.TemporaryDirectory(prefix="ac-latency-model-") as tmp:
        model = build(family, dataset.schema, arch, seed=seed)
        # train for id counts (frequency hashing), no valid split: nothing is fine-tuned
        ctx = TechniqueContext(schema=dataset.schema, work_dir=Path(tmp), train=dataset.train, valid=None)
        compressed = apply_policy(model, structural, ctx)
        built = time.perf_counter()
        report = measure_on_target(
            compressed.onnx_path,
            dataset.schema,
            target,
            cache_dir=cache_dir,
            busy_policy=busy_policy,
        ).report
    row = report.rows[0]
    return {
        "arch": dict(arch),
        "policy": policy.to_dict(),
        "p50_ms": row.p50_ms,
        "p95_ms": row.p95_ms,
        "p99_ms": row.p99_ms,
        "busy": report.busy,
        "seconds_build": built - started,
        "seconds_measure": time.perf_counter() - built,
    }


def model_cache_key(
    space: SearchSpace, schema: FeatureSchema, target: Target, candidates: int, seed: int
) -> str:
    """What a fitted model belongs to: where it is measured, the calibration target, schema, space, sample."""
    from autocompress.measure.busy import probe_node_key
    from autocompress.measure.placement import latency_resource

    resource = latency_resource(target)
    parts = {
        "version": LATENCY_MODEL_VERSION,
        "features": list(FEATURES),
        "where": f"resource:{resource}" if resource else f"host:{probe_node_key()}",
        "target": target.to_dict(),
        "schema": schema.to_dict(),
        "space": space.to_dict(),
        "candidates": candidates,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def calibrate(
    space: SearchSpace,
    dataset: Dataset,
    target: Target,
    budget: Budget,
    *,
    cache_dir: str | Path,
    latency_cache_dir: str | Path,
    candidates: int = 40,
    seed: int = 0,
    busy_policy: BusyPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[LatencyModel, bool]:
    """The latency model of ``space`` on ``target`` at the budget's batch size, and whether it was cached.

    Fitted once per key (``model_cache_key``) on ``candidates`` candidates sampled from ``space``
    and measured on the target (``measure_candidate``); kept in ``cache_dir`` as
    ``latency-model-<family>-<key>.json`` with its measurements. ``busy_policy`` goes to
    ``measure_candidate``; ``progress(done, total)`` is called after each measured candidate.
    """
    from autocompress.measure.latency_cache import write_json_atomically

    family = space.family
    if family not in INVENTORIES:
        raise AutocompressError(
            f"search.latency_model: family {family!r} is not modelled yet; modelled: {list(FAMILIES)}"
        )
    measured_on = calibration_target(target, budget.batch_size)
    key = model_cache_key(space, dataset.schema, measured_on, candidates, seed)
    folder = Path(cache_dir)
    file = folder / f"latency-model-{family}-{key[:16]}.json"
    cached = _load_cached(file, key)
    if cached is not None:
        return cached, True
    counts = TableCounts.from_dataset(dataset)
    sampled = sample_candidates(space, candidates, seed)
    if len(sampled) < 4:
        raise AutocompressError(
            f"search.latency_model: the space {space.name} yields {len(sampled)} distinct candidates the "
            "model can describe; it needs at least 4"
        )
    rows = []
    for i, (arch, policy) in enumerate(sampled):
        row = measure_candidate(
            family,
            arch,
            policy,
            dataset,
            measured_on,
            Path(latency_cache_dir),
            seed=seed,
            busy_policy=busy_policy,
        )
        row["features"] = candidate_features(
            candidate_inventory(family, dataset.schema, arch, policy, counts)
        )
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(sampled))
    model = fit_latency_model(family, dataset.schema, budget.batch_size, rows, counts, key=key)
    write_json_atomically(file, {"key": key, "model": model.to_dict(), "rows": rows})
    return model, False


def _load_cached(file: Path, key: str) -> LatencyModel | None:
    try:
        data = json.loads(file.read_text())
        if data.get("key") != key:
            return None
        return LatencyModel.from_dict(data["model"])
    except (OSError, ValueError, KeyError, TypeError, AutocompressError):
        return None
