"""The README's figures come from files: every table is a block rendered from benchmarks/results/."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402  (benchmarks/ is not a package)


def test_every_results_block_equals_its_rendering_from_the_results_file() -> None:
    text = (ROOT / "README.md").read_text()
    names = [m["name"] for m in readme_tables.BLOCK.finditer(text)]
    assert sorted(names) == sorted(readme_tables.TABLES)  # each rendered table is shown, once
    _, changed = readme_tables.rendered_readme(text)
    assert changed == [], f"run `python benchmarks/readme_tables.py`: {changed} disagree with their files"


def test_every_table_in_the_readme_sits_in_a_results_block() -> None:
    text = (ROOT / "README.md").read_text()
    outside = readme_tables.BLOCK.sub("", text)
    tables = [line for line in outside.splitlines() if re.match(r"^\|.*\|$", line)]
    assert tables == [], "a table typed by hand: render it from a results file (benchmarks/readme_tables.py)"


def test_a_figure_edited_by_hand_or_a_changed_results_file_is_caught(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = next(m for m in readme_tables.BLOCK.finditer(text) if m["name"] == "techniques")
    edited = text.replace(block["body"], block["body"].replace("| onnx_fp32 | 0.", "| onnx_fp32 | 1.", 1))
    assert edited != text
    assert readme_tables.rendered_readme(edited)[1] == ["techniques"]

    # the other way round: a new results file, the old README
    for name in {f for f, _ in readme_tables.TABLES.values()}:
        (tmp_path / name).write_text((readme_tables.RESULTS / name).read_text())
    fuzz = tmp_path / "fuzz.json"
    fuzz.write_text(fuzz.read_text().replace('"server_errors": 0', '"server_errors": 3'))
    assert readme_tables.rendered_readme(text, tmp_path)[1] == ["fuzz"]


def test_an_unknown_block_name_is_refused() -> None:
    with pytest.raises(SystemExit, match="README block 'speed': unknown"):
        readme_tables.rendered_readme("<!-- results: speed -->\n| x |\n<!-- /results -->\n")
