"""Tune searchers of our own, defined at module level so that plain ``pickle`` saves them.

Tune pickles its search algorithm into the run (``Tuner``) and every searcher checkpoint
(``OptunaSearch.save`` uses plain ``pickle``), so a class made inside a function cannot be used.
This module imports Optuna and Ray: ``tuner.SEARCHERS`` imports it only when a searcher is built.
"""

from __future__ import annotations

import collections
import copy
import pickle
import threading
from typing import Any

import numpy as np
from optuna.samplers import NSGAIISampler
from ray.tune.search import Searcher as TuneSearcher
from ray.tune.search.sample import Domain

from autocompress.errors import AutocompressError

__all__ = ["CandidateBatches", "GivenConfigs", "PicklableNSGAIISampler", "RegularizedEvolution"]

_LOCK_TYPE = type(threading.Lock())
_LOCKS_KEY = "_autocompress_locks"


class PicklableNSGAIISampler(NSGAIISampler):
    """Optuna's ``NSGAIISampler`` that pickles.

    Optuna 5 keeps a ``threading.Lock`` on its genetic samplers, which cannot be pickled; this
    subclass leaves locks out of its pickled state and makes new ones when it is loaded (a lock
    guards the running process only, so nothing of the search is lost).
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        locks = [name for name, value in state.items() if isinstance(value, _LOCK_TYPE)]
        for name in locks:
            del state[name]
        return {**state, _LOCKS_KEY: locks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop(_LOCKS_KEY, [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())


# Optuna names the study attributes its genetic samplers write after the class: keep NSGAIISampler's
for _key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
    if hasattr(NSGAIISampler, _key):
        setattr(PicklableNSGAIISampler, _key, getattr(NSGAIISampler, _key))


class RegularizedEvolution(TuneSearcher):
    """Regularised (aging) evolution over the flat search space (Real et al., 2019).

    The first ``population_size`` trials sample the space at random. Each later trial copies
    the best of ``sample_size`` members drawn from the population (the last
    ``population_size`` finished trials) and resamples one of its searched dimensions. The
    oldest member leaves first, whatever its score, which keeps the search exploring. Failed
    trials and trials without the metric do not join the population.
    """

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        population_size: int = 8,
        sample_size: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise AutocompressError(
                f"evolution: need population_size >= 2 and 1 <= sample_size <= population_size, "
                f"got {population_size} and {sample_size}"
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self._rng = np.random.default_rng(seed)
        self._space: dict[str, Any] | None = None
        self._population: collections.deque[tuple[dict[str, Any], float]] = collections.deque(
            maxlen=population_size
        )
        self._live: dict[str, dict[str, Any]] = {}

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        if self._space is not None:
            return False
        self._space = dict(config)
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def _sample(self, domain: Any) -> Any:
        return domain.sample(random_state=self._rng)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._space is None:
            raise AutocompressError("evolution: the searcher has no search space (param_space)")
        searched = [k for k, v in self._space.items() if isinstance(v, Domain)]
        if len(self._population) < self.population_size or not searched:
            config = {k: self._sample(v) if isinstance(v, Domain) else v for k, v in self._space.items()}
        else:
            picks = self._rng.choice(len(self._population), size=self.sample_size, replace=False)
            parent = max((self._population[int(i)] for i in picks), key=lambda member: member[1])[0]
            config = dict(parent)
            key = searched[int(self._rng.integers(len(searched)))]
            for _ in range(10):  # a different value where the dimension has one
                config[key] = self._sample(self._space[key])
                if config[key] != parent[key]:
                    break
        self._live[trial_id] = config
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        config = self._live.pop(trial_id, None)
        metric = self._metric
        if config is None or error or not result or metric is None or result.get(metric) is None:
            return
        score = float(result[metric])
        self._population.append((config, score if self._mode == "max" else -score))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__.copy(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))


class CandidateBatches(TuneSearcher):
    """Many candidates per Tune trial, each proposed by a searcher that learns from every one of them.

    Tune asks a searcher for one config per trial; a two-stage search's trial scores a batch of
    candidates (``autocompress.engine.explore``). This searcher wraps the job's searcher (TPE,
    NSGA-II, evolution, random: any Tune ``Searcher``, given the space with ``space``): for a trial
    it asks the wrapped one for ``per_trial`` candidates under ids ``<trial id>#<i>`` and suggests
    ``{"candidates": [config, ...]}``; the trial reports each candidate as one result carrying its
    index as ``candidate``, and the wrapped searcher is told that candidate's outcome at once
    (``on_trial_complete`` of its id), so later batches are proposed from every earlier candidate.
    A candidate that failed, or that its trial never reported, is told as an error. At most
    ``total`` candidates are proposed, then the searcher is finished.
    """

    def __init__(self, searcher: TuneSearcher, space: dict[str, Any], *, per_trial: int, total: int) -> None:
        super().__init__(metric=None, mode=None)
        if per_trial < 1 or total < 1:
            raise AutocompressError(
                f"candidate batches: need per_trial and total >= 1, got {per_trial}, {total}"
            )
        searcher.set_search_properties(None, None, space)
        self.searcher = searcher
        self.per_trial = per_trial
        self.total = total
        self.proposed = 0
        self._open: dict[str, list[str]] = {}  # trial id -> its candidates not told yet

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return not config  # the space came with the wrapped searcher

    # Tune's searchers return ``Searcher.FINISHED`` (a str) when done, which its annotation leaves out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        count = min(self.per_trial, self.total - self.proposed)
        if count <= 0:
            return str(TuneSearcher.FINISHED)
        candidates = []
        for index in range(count):
            config = self.searcher.suggest(f"{trial_id}#{index}")
            if config is None or config == TuneSearcher.FINISHED:
                break
            candidates.append(config)
        if not candidates:
            return None
        self.proposed += len(candidates)
        self._open[trial_id] = [f"{trial_id}#{index}" for index in range(len(candidates))]
        return {"candidates": candidates}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        index = result.get("candidate")
        candidate = f"{trial_id}#{index}"
        if candidate not in self._open.get(trial_id, ()):
            return  # not a candidate's report, or a retried trial reporting one already told
        self._open[trial_id].remove(candidate)
        failed = result.get("status") == "failed"
        self.searcher.on_trial_complete(candidate, result=None if failed else result, error=failed)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result is not None:
            self.on_trial_result(trial_id, result)
        for candidate in self._open.pop(trial_id, []):
            self.searcher.on_trial_complete(candidate, result=None, error=True)

    # Tune checkpoints a wrapping searcher (one with a ``searcher``, as its ConcurrencyLimiter) by
    # ``get_state`` / ``set_state`` and the wrapped one by its own ``save`` / ``restore``.
    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class GivenConfigs(TuneSearcher):
    """Suggests the given configs in order, each once, then finishes: trials of a chosen list, no search.

    What a two-stage search's stage 2 runs its finalists with. Each config must give every searched
    key of the space (a sampled flat config does); the space's fixed values come from the
    ``param_space``. (Tune's variant generator cannot take such ``points_to_evaluate``: it reads
    a list value, such as ``arch.top_mlp: [64]``, as a path into the categorical domain.)
    """

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__(metric=None, mode=None)
        self.configs = [dict(c) for c in configs]
        self.suggested = 0

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True  # the configs are the search

    # Tune's searchers return ``Searcher.FINISHED`` (a str) when done, which its annotation leaves out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.suggested >= len(self.configs):
            return str(TuneSearcher.FINISHED)
        self.suggested += 1
        return dict(self.configs[self.suggested - 1])

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__.copy(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
