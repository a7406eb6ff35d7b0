from autocompress.search.pareto import NO_FEASIBLE_MODEL, Candidate, pareto_front, select_winner


def _c(name, auc, latency, size, feasible=True, distance=0.0):
    return Candidate(name, auc, latency, size, feasible, distance)


def test_front_keeps_exactly_the_non_dominated():
    a = _c("a", 0.85, 2.0, 10.0)  # best AUC
    b = _c("b", 0.84, 1.0, 10.0)  # faster
    c = _c("c", 0.84, 1.0, 2.0)  # dominates b (smaller, same otherwise)
    d = _c("d", 0.83, 3.0, 20.0)  # dominated by a
    e = _c("e", 0.80, 0.5, 50.0)  # fastest
    assert [x.trial_id for x in pareto_front([a, b, c, d, e])] == ["a", "c", "e"]
    assert pareto_front([]) == []
    twin = _c("twin", 0.85, 2.0, 10.0)  # equal points do not dominate each other
    assert {x.trial_id for x in pareto_front([a, twin])} == {"a", "twin"}


def test_winner_is_the_best_feasible_not_the_best_overall():
    best_but_slow = _c("slow", 0.86, 5.0, 10.0, feasible=False, distance=4.0)
    good = _c("good", 0.84, 0.8, 3.0)
    tie_faster = _c("tie", 0.84, 0.7, 3.0)
    selection = select_winner([best_but_slow, good, tie_faster])
    assert selection.winner is not None and selection.winner.trial_id == "tie"
    assert selection.reason is None
    assert {c.trial_id for c in selection.front} == {"slow", "tie"}


def test_no_feasible_model_reports_the_closest_candidates():
    far = _c("far", 0.86, 9.0, 10.0, feasible=False, distance=8.0)
    near = _c("near", 0.80, 1.2, 3.0, feasible=False, distance=0.2)
    middle = _c("middle", 0.83, 2.0, 3.0, feasible=False, distance=1.0)
    selection = select_winner([far, near, middle], closest=2)
    assert selection.winner is None
    assert selection.reason == NO_FEASIBLE_MODEL
    assert [c.trial_id for c in selection.closest] == ["near", "middle"]


def test_from_metrics_reads_the_trial_report():
    metrics = {
        "valid_auc": 0.8,
        "latency_ms": 1.5,
        "size_mb": 2.0,
        "feasible": False,
        "distance_to_feasible": 0.5,
    }
    c = Candidate.from_metrics("t1", metrics)
    assert (c.valid_auc, c.latency_ms, c.size_mb, c.feasible, c.distance_to_feasible) == (
        0.8,
        1.5,
        2.0,
        False,
        0.5,
    )
    assert c.metrics["valid_auc"] == 0.8
