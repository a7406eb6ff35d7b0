"""Path sandboxing: a path a client names is read only if it lies inside a folder the server allows,
and only in a format a loader parses.

Nothing a client sends is unpickled: pickles and checkpoints are refused by name, before any
loader sees them.
"""

from __future__ import annotations

from pathlib import Path

from autocompress.errors import AutocompressError

__all__ = ["CODE_SUFFIXES", "YAML_SUFFIXES", "check_format", "inside"]

# spec files are parsed (text, CSV, Parquet, YAML), never unpickled: these formats are refused by name
CODE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")
YAML_SUFFIXES = (".yaml", ".yml")


def inside(root: Path, path: str | Path, where: str) -> Path:
    """``path`` (relative ones taken from ``root``) resolved, if it lies inside ``root``; else a 4xx error."""
    base = root.resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise AutocompressError(f"{where}: {str(path)!r} lies outside the folder this server may read")
    return resolved


def check_format(path: Path, where: str, suffixes: tuple[str, ...] | None) -> None:
    """Refuse pickles and checkpoints by name, and files not of the format ``where`` takes."""
    if any(suffix.lower() in CODE_SUFFIXES for suffix in path.suffixes):
        raise AutocompressError(
            f"{where}: {path.name!r} is a pickle or checkpoint file, which this server never loads "
            "(datasets are CSV, TSV or Parquet files; schemas and search spaces are YAML)"
        )
    if suffixes is not None and path.is_file() and not path.name.lower().endswith(suffixes):
        raise AutocompressError(f"{where}: {path.name!r} is not one of the formats {list(suffixes)}")
