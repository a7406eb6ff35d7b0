from autocompress.report import html_report, pareto_plot
from autocompress.search.pareto import Candidate, select_winner

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _candidates():
    return [
        Candidate("t0", 0.85, 2.0, 10.0, feasible=False, distance_to_feasible=1.0),
        Candidate("t1", 0.84, 0.9, 3.0, feasible=True),
        Candidate("t2", 0.80, 0.5, 1.0, feasible=True),
    ]


def test_plot_and_html_show_the_winner_and_the_table(tmp_path):
    candidates = _candidates()
    selection = select_winner(candidates)
    plot = pareto_plot(candidates, selection, tmp_path / "pareto.png", budget_latency_ms=1.0)
    assert plot.read_bytes().startswith(PNG_MAGIC) and plot.stat().st_size > 5_000
    rows = [
        {"name": "winner <t1>", "test_auc": 0.8412, "size_ratio": 25.0},
        {"name": "onnx_fp32", "test_auc": 0.8540, "size_mb": 79.45},
    ]
    page = html_report("job <1>", rows, selection, plot, tmp_path / "report.html").read_text()
    assert "<title>job &lt;1&gt;</title>" in page  # escaped, never raw markup from names
    assert "winner &lt;t1&gt;" in page and "0.8412" in page and "79.45" in page
    assert "Winner: trial <b>t1</b>" in page
    assert "data:image/png;base64,iVBORw0KGgo" in page  # the plot is inlined: one file to share


def test_html_says_when_no_model_meets_the_budget(tmp_path):
    candidates = [Candidate("a", 0.8, 3.0, 5.0, False, 2.0), Candidate("b", 0.7, 1.1, 5.0, False, 0.1)]
    selection = select_winner(candidates)
    plot = pareto_plot(candidates, selection, tmp_path / "p.png")
    page = html_report("job", [], selection, plot, tmp_path / "r.html").read_text()
    assert "no feasible model" in page and "closest candidates: b, a" in page
