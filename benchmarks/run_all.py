"""Run every benchmark in this folder, one after the other (``make bench``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCHMARKS = [
    "export_latency.py",
    "techniques.py",
    "search.py",
    "latency_model.py",
    "serve_load.py",
    "cluster_scaling.py",
]


def main() -> int:
    here = Path(__file__).parent
    for name in BENCHMARKS:
        print(f"== {name}")
        try:
            runpy.run_path(str(here / name), run_name="__main__")
        except SystemExit as exit_:
            if exit_.code:
                return int(exit_.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
