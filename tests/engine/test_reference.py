"""Same spec, same reference: a fixed seed trains the same reference model in two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Trains the tiny reference in a process of its own and prints its valid AUC and a digest of its
# weights: nothing seeded in this process (the test's) can leak into the run.
TRAIN_ONCE = """
import hashlib, json, sys
from pathlib import Path
from autocompress.data.synthetic import SyntheticConfig, load_synthetic
from autocompress.engine.reference import train_reference
from autocompress.train import TrainConfig

config = TrainConfig(epochs=1, batch_size=512, lr=3e-3, seed=int(sys.argv[2]), early_stopping_patience=None)
ref = train_reference("dlrm", load_synthetic(SyntheticConfig.tiny()), config, Path(sys.argv[1]))
digest = hashlib.sha256()
for tensor in ref.model.state_dict().values():
    digest.update(tensor.detach().cpu().numpy().tobytes())
print(json.dumps({"valid_auc": ref.valid_auc, "weights": digest.hexdigest()}))
"""


def _train_in_a_new_process(work: Path, seed: int) -> dict[str, object]:
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_ONCE, str(work), str(seed)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_one_seed_trains_one_reference_in_two_processes(tmp_path: Path) -> None:
    first = _train_in_a_new_process(tmp_path / "a", seed=3)
    second = _train_in_a_new_process(tmp_path / "b", seed=3)
    assert first == second  # the same weights, bit for bit, and so the same valid AUC
    other = _train_in_a_new_process(tmp_path / "c", seed=4)
    assert other["weights"] != first["weights"]  # the seed, not a constant, decides them
