"""The README's tables of figures, rendered from the results files under ``benchmarks/results/``.

Each table sits in README.md between ``<!-- results: NAME -->`` and ``<!-- /results -->``;
``python benchmarks/readme_tables.py`` rewrites every block from its file (run it after a
benchmark), ``--check`` exits 1 naming the blocks that disagree. ``tests/test_readme.py`` runs the
check, and fails on a table outside any block, so no figure in a README table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- results: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
DASH = "—"


def _table(head: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    lines = [head, align, *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    return DASH if value is None else f"{value:{fmt}}{suffix}"


def _met(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def search_comparison(result: dict[str, Any]) -> str:
    """The search benchmark's winners (two-stage, per-trial) on the test split, beside the baselines."""
    head = ["model", "test AUC", "ΔAUC", "MB", "smaller", "b256 p50 speed-up", "b256 p99 ms", "within budget"]
    rows = []
    for name, r in (
        ("winner", result["winner"]),
        ("per-trial winner", result["per_trial"]["winner"]),
        ("ort_dynamic_int8", result["ort_dynamic_int8"]),
        ("onnx_fp32", result["onnx_fp32"]),
    ):
        if r is None:
            reason = result["no_winner_reason"] if name == "winner" else "no feasible model"
            rows.append([name, reason or DASH, *[""] * 6])
            continue
        label = name
        if name == "winner":
            steps = " + ".join(r["techniques"] or [])
            label = f"winner ({r['searcher']}, trial {r['trial']}: {steps})"
        within = r.get("within_budget")
        rows.append(
            [
                label,
                f"{r['test_auc']:.4f}",
                DASH if name == "onnx_fp32" else f"{r['delta_auc']:+.4f}",
                _num(r.get("size_mb"), ".2f"),
                f"{r['size_ratio']:.1f}x",
                f"{r['speedup_b256']:.2f}x",
                f"{r['p99_ms_b256']:.3f}",
                DASH if within is None else ("yes" if within else "no: " + "; ".join(r["violations"])),
            ]
        )
    targets = "; ".join(f"{name.replace('_', ' ')}: {_met(met)}" for name, met in result["targets"].items())
    return _table(head, rows) + f"\nTargets: {targets}.\n"


def search_budget(result: dict[str, Any]) -> str:
    """Per-trial against two-stage search at one wall-clock budget, and the rank fidelity of stage 1."""
    head = [
        "search",
        "candidates",
        "wall s",
        "candidates / hour",
        "feasible / confirmed",
        "best feasible valid AUC",
        "its test AUC",
        "hypervolume",
    ]
    per_trial, two_stage = result["per_trial"], result["two_stage"]
    rows = [
        [
            f"{name} ({s['searcher']})",
            str(s["candidates"]),
            f"{s['wall_seconds']:.0f}",
            f"{s['candidates_per_hour']:.0f}",
            f"{s['feasible']} / {confirmed}",
            _num(s["best_feasible_valid_auc"], ".4f"),
            _num(s["best_feasible_test_auc"], ".4f"),
            f"{s['hypervolume']:.4f}",
        ]
        for name, s, confirmed in (
            ("per_trial", per_trial, per_trial["completed"]),
            ("two_stage", two_stage, two_stage["stage2_trials"]),
        )
    ]
    ratio = two_stage["candidates_per_hour"] / max(per_trial["candidates_per_hour"], 1e-9)
    tau, detail = result["kendall_tau"], result["kendall_tau_detail"]
    supernet_s = two_stage["supernet_seconds"]
    model_budget = "; ".join(result["budget"]["text"].values())
    return (
        _table(head, rows)
        + f"\nBudget {result['minutes']:g} min each. Two-stage: supernet {supernet_s:.0f} s"
        f" + stage 1 {two_stage['stage1_seconds']:.0f} s + stage 2 {two_stage['stage2_seconds']:.0f} s"
        f" ({'within' if two_stage['within_budget'] else 'over'} the budget), {ratio:.1f}x the per-trial"
        f" candidates per hour. Kendall tau between stage-1 and fine-tuned valid AUC: {_num(tau, '.3f')}"
        f" over {detail['candidates']} candidates ({detail['source']})."
        f" Model budget, as the finished candidates were judged: {model_budget}.\n"
    )


def search_searchers(result: dict[str, Any]) -> str:
    """The stage-1 searchers, each on the same supernet with the same candidate count and seeds."""
    head = [
        "searcher",
        "candidates x seeds",
        "hypervolume mean ± std (vs random)",
        "per seed",
        "best feasible valid AUC (mean)",
        "candidates / s",
    ]
    base = result["searchers"].get("random", {}).get("hypervolume_mean")
    rows = []
    for name, s in sorted(result["searchers"].items()):
        hv = f"{s['hypervolume_mean']:.4f} ± {s['hypervolume_std']:.4f}"
        if base:
            hv += f" ({s['hypervolume_mean'] / base:.2f}x)"
        rows.append(
            [
                name,
                f"{s['candidates_min']} x {len(s['seeds'])}",
                hv,
                " ".join(f"{v:.4f}" for v in s["hypervolume_per_seed"]),
                _num(s["best_valid_auc_mean"], ".4f"),
                f"{s['candidates_per_second']:.2f}",
            ]
        )
    return _table(head, rows)


def search_reference(result: dict[str, Any]) -> str:
    """The reference model alone, with the ceiling (oracle) and floor (popularity) beside it."""
    ref = result.get("reference")
    if ref is None:
        return "(not in this results file: run `python benchmarks/search.py`)\n"
    head = [
        "architecture",
        "parameters",
        "in embeddings",
        "valid AUC",
        "test AUC",
        "oracle AUC",
        "popularity AUC",
    ]
    arch = ", ".join(f"{k} {v}" for k, v in ref["arch"].items())
    row = [
        arch,
        f"{ref['params'] / 1e6:.1f}M",
        f"{ref['embedding_share']:.0%}",
        f"{ref['valid_auc']:.4f}",
        f"{ref['test_auc']:.4f}",
        _num(ref["oracle_test_auc"], ".4f"),
        f"{ref['popularity_test_auc']:.4f}",
    ]
    return _table(head, [row])


def techniques(result: dict[str, Any]) -> str:
    """Every technique and policy of the techniques benchmark, those that got slower included."""
    head = ["policy", "test AUC", "ΔAUC", "MB", "smaller", "b256 p50 / p99 ms", "b256 speed-up"]
    rows = [
        [
            r["name"],
            f"{r['test_auc']:.4f}",
            DASH if r["name"] == "onnx_fp32" else f"{r['delta_auc']:+.4f}",
            f"{r['size_mb']:.2f}",
            f"{r['size_ratio']:.1f}x",
            f"{r['p50_ms_b256']:.2f} / {r['p99_ms_b256']:.2f}",
            f"{r['speedup_b256']:.2f}x",
        ]
        for r in result["rows"]
    ]
    return _table(head, rows)


def serve_load(result: dict[str, Any]) -> str:
    """Served against in-process ONNX Runtime per model: latency at concurrency 1, throughput at 32."""
    points = {(r["model"], r["mode"], r["concurrency"]): r for r in result["rows"]}
    head = [
        "model",
        "in process p50 c1",
        "served p50 c1 (overhead)",
        "c32 req/s batched / unbatched (speedup)",
    ]
    head += [
        "in process c32 req/s",
        "bare Serve p50 c1 / c32 req/s",
        "CPU ms / request c1: client / API / model replica",
    ]
    rows = []
    for model, s in result["summary"]["by_model"].items():
        batched, unbatched = points[(model, "serve_batched", 32)], points[(model, "serve_unbatched", 32)]
        cpu = s["cpu_ms_per_request_c1"]
        rows.append(
            [
                model,
                f"{s['in_process_p50_ms_c1']:.2f} ms",
                f"{points[(model, 'serve_batched', 1)]['p50_ms']:.2f} ms ({s['p50_overhead_ms_c1']:.2f} ms)",
                f"{batched['throughput_rps']:.0f} / {unbatched['throughput_rps']:.0f} "
                f"({s['batching_speedup_c32']:.2f}x)",
                f"{points[(model, 'in_process_ort', 32)]['throughput_rps']:.0f}",
                f"{s['bare_serve_p50_ms_c1']:.2f} ms / {s['bare_serve_throughput_c32']:.0f}",
                f"{cpu['client']:.2f} / {cpu['ingress']:.2f} / {cpu['model_server']:.2f}",
            ]
        )
    text = _table(head, rows) + "\n"
    for kill in (r for r in result["rows"] if r["mode"] == "replica_kill"):
        text += (
            f"A `ModelServer` replica killed mid-run ({kill['model']}, concurrency {kill['concurrency']}): "
            f"{kill['requests']} requests, {kill['failed']} failed.\n"
        )
    summary = result["summary"]
    text += (
        f"Ranking 200 candidates (columns, concurrency 8, {summary['model']}): "
        f"{summary['rank_k200_candidates_per_s_c8']:.0f} candidates/s, the bare Serve deployment "
        f"{summary['bare_serve_k200_candidates_per_s_c8']:.0f}. Promote and rollback under load: "
        f"{summary['alias_switch_failed_requests']} failed requests.\n"
    )
    targets = summary["targets_met"]
    text += "Targets: " + "; ".join(f"{k}: {_met(v)}" for k, v in targets.items()) + ".\n"
    return text


def cluster_scaling(result: dict[str, Any]) -> str:
    """Trials per hour against the number of Ray nodes."""
    head = ["nodes", "trials", "wall s", "trials / hour", "speed-up", "trained on", "latency measured on"]
    rows = [
        [
            str(r["nodes"]),
            str(r["trials"]),
            f"{r['wall_s']:.0f}",
            f"{r['trials_per_hour']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['nodes_used_for_training']} node{'s' if r['nodes_used_for_training'] > 1 else ''}",
            "the head" if r["latency_on_head_only"] else "several nodes",
        ]
        for r in result["rows"]
    ]
    return _table(head, rows, right_from=0)


def latency_model(result: dict[str, Any]) -> str:
    """The latency model's error on candidates it did not see, per family, and one search's skips."""
    head = ["family", "held-out candidates", "p99 median error", "p99 p90 error", "p50 median error"]
    head += ["p50 p90 error", "targets (median <= 0.10, p90 <= 0.25)"]
    rows = []
    for family, f in sorted(result["families"].items()):
        met = f["targets_met"]
        rows.append(
            [
                family,
                str(f["candidates"]),
                f"{f['median_rel_error_b256']:.3f}",
                f"{f['p90_rel_error_b256']:.3f}",
                f"{f['p50']['median_rel_error_b256']:.3f}",
                f"{f['p50']['p90_rel_error_b256']:.3f}",
                "; ".join(f"{k.split('_')[0]} {_met(v)}" for k, v in met.items()),
            ]
        )
    search = result["search"]
    return _table(head, rows) + (
        f"\nOne search ({search['job']}, {search['trials']} trials): {search['skipped']} skipped on their "
        f"prediction ({result['skipped_fraction_in_search']:.0%}), "
        f"{search['wrong_skips_measured_within_budget']} of them within the budget when built and measured.\n"
    )


def fuzz(result: dict[str, Any]) -> str:
    """The last fuzzing run of the API."""
    return (
        f"Last `make fuzz`: {result['requests']} requests, {result['server_errors']} server errors, "
        f"{result['schema_violations']} schema violations.\n"
    )


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "search-comparison": ("search.json", search_comparison),
    "search-budget": ("search.json", search_budget),
    "search-searchers": ("search.json", search_searchers),
    "search-reference": ("search.json", search_reference),
    "techniques": ("techniques.json", techniques),
    "serve-load": ("serve_load.json", serve_load),
    "cluster-scaling": ("cluster_scaling.json", cluster_scaling),
    "fuzz": ("fuzz.json", fuzz),
    "latency-model": ("latency_model.json", latency_model),
}


def render(name: str, results_dir: Path = RESULTS) -> str:
    """Block ``name`` as rendered from its results file."""
    file_name, renderer = TABLES[name]
    return renderer(json.loads((results_dir / file_name).read_text()))


def rendered_readme(text: str, results_dir: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every results block rendered afresh, and the names of the blocks that changed."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"README block {name!r}: unknown; known: {sorted(TABLES)}")
        body = render(name, results_dir)
        if body != match["body"]:
            changed.append(name)
        return match[1] + body + match[4]

    return BLOCK.sub(replace, text), changed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a block disagrees with its file")
    args = parser.parse_args()
    text = README.read_text()
    new, changed = rendered_readme(text)
    if args.check:
        if changed:
            print(f"README blocks out of date with benchmarks/results: {changed}", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"rendered {len(BLOCK.findall(text))} blocks; changed: {changed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
