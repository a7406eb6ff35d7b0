"""Tune searchers of our own, defined at module level so that plain ``pickle`` saves them.

Tune pickles its search algorithm into the run (``Tuner``) and every searcher checkpoint
(``OptunaSearch.save`` uses plain ``pickle``), so a class made inside a function cannot be used.
This module imports Optuna and Ray: ``tuner.SEARCHERS`` imports it only when a searcher is built.
"""

from __future__ import annotations

import collections
import pickle
import threading
from typing import Any

import numpy as np
from optuna.samplers import NSGAIISampler
from ray.tune.search import Searcher as TuneSearcher
from ray.tune.search.sample import Domain

from autocompress.errors import AutocompressError

__all__ = ["PicklableNSGAIISampler", "RegularizedEvolution"]

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
