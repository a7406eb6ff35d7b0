"""Engine: what runs a job, above the search vocabulary (``autocompress.search``) and the techniques.

``job`` runs a whole search job; ``reference`` trains the reference and builds the baselines;
``comparison`` re-measures candidates and compares them on the test split; ``model`` trains and
measures one model end to end; ``tuner`` is the Ray Tune layer over ``trial`` (one candidate),
with ``searchers``, ``recording`` (the store callback) and ``cancel``; ``two_stage`` is the
supernet search (``search.strategy: two_stage``), whose stage 1 scores candidates with ``explore``.
The modules that import Ray are not re-exported here, so importing this package does not import
Ray or torch.
"""

from autocompress.engine.comparison import compare_on_test, remeasure_latency
from autocompress.engine.job import JobResult, run_job
from autocompress.engine.model import ModelReport, train_and_measure
from autocompress.engine.reference import Reference, baseline_models, train_reference

__all__ = [
    "JobResult",
    "ModelReport",
    "Reference",
    "baseline_models",
    "compare_on_test",
    "remeasure_latency",
    "run_job",
    "train_and_measure",
    "train_reference",
]
