"""The report of a search: a comparison table, the Pareto plot (PNG) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autocompress.search.pareto import Candidate, Selection

COLUMNS = (
    "name",
    "test_auc",
    "delta_auc",
    "size_mb",
    "size_ratio",
    "p50_ms_b1",
    "p99_ms_b256",
    "speedup_b256",
    "within_budget",
)


def pareto_plot(
    candidates: Sequence[Candidate],
    selection: Selection,
    path: str | Path,
    *,
    budget_latency_ms: float | None = None,
) -> Path:
    """Valid AUC against latency for every candidate (marker area ~ size); front, winner, budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        if candidates:
            biggest = max(c.size_mb for c in candidates) or 1.0
            ax.scatter(
                [c.latency_ms for c in candidates],
                [c.valid_auc for c in candidates],
                s=[20 + 180 * c.size_mb / biggest for c in candidates],
                c=["tab:blue" if c.feasible else "tab:gray" for c in candidates],
                alpha=0.6,
                label="trials (area ~ size; grey = over budget)",
            )
        front = sorted(selection.front, key=lambda c: c.latency_ms)
        if front:
            ax.plot(
                [c.latency_ms for c in front],
                [c.valid_auc for c in front],
                "-o",
                color="tab:orange",
                label="Pareto front",
            )
        if selection.winner is not None:
            w = selection.winner
            ax.scatter(
                [w.latency_ms],
                [w.valid_auc],
                marker="*",
                s=300,
                color="tab:red",
                label=f"winner {w.trial_id}",
            )
        if budget_latency_ms is not None:
            ax.axvline(
                budget_latency_ms, color="tab:red", linestyle="--", linewidth=1, label="latency budget"
            )
        ax.set_xlabel("latency (ms, budget batch size and percentile)")
        ax.set_ylabel("valid AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def comparison_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table of the rows (winner, reference, baselines), values escaped and formatted."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in COLUMNS)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    selection: Selection,
    plot_path: str | Path,
    out_path: str | Path,
    notes: Sequence[str] = (),
) -> Path:
    """Write one HTML file with the outcome, any notes (e.g. a target fallback), the comparison table and
    the Pareto plot inlined."""
    image = base64.b64encode(Path(plot_path).read_bytes()).decode("ascii")
    if selection.winner is not None:
        outcome = f"<p>Winner: trial <b>{html.escape(selection.winner.trial_id)}</b>.</p>"
    else:
        closest = ", ".join(html.escape(c.trial_id) for c in selection.closest)
        outcome = f"<p><b>{html.escape(selection.reason or '')}</b>; closest candidates: {closest}.</p>"
    notes_html = "".join(f"<p class='note'><b>Note:</b> {html.escape(n)}</p>" for n in notes)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{outcome}{notes_html}{comparison_table_html(rows)}"
        f"<h2>Pareto front</h2><img alt='Pareto plot' src='data:image/png;base64,{image}'>"
        "</body></html>"
    )
    out = Path(out_path)
    out.write_text(page, encoding="utf-8")
    return out


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)
