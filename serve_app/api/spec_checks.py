"""What the server accepts of a submitted job spec beyond its schema: file paths inside the data
folder, free-form fields of bounded depth, and a search space that loads.

:func:`checked_spec` runs before a job is recorded, so a spec the driver could not run (or that
would read outside the data folder) is a 422 naming the field, never a failed job later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from serve_app.api.paths import YAML_SUFFIXES, check_format, inside
from serve_app.api.settings import Settings

__all__ = ["MAX_SPEC_DEPTH", "checked_spec"]

# MLflow tracking a submitted job may use: a server or a database, never a file on the API's machine
SERVER_TRACKING_SCHEMES = ("http", "https", "databricks", "postgresql", "mysql", "mssql")
MAX_SPEC_DEPTH = 32  # free-form spec fields (train, dataset.options) nest at most this deep


def _nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and objects, counted up to ``limit + 1`` at most."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_nesting_depth(child, limit - 1) for child in children), default=0)


def checked_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """The spec with its file paths resolved inside the server's data folder; other paths refused.

    ``search.storage_path`` is the server's to choose (each job's Tune run lives in its work folder);
    ``tracking`` may name a tracking server or database, never a file here (``sqlite:``, ``file:``,
    a folder for artifacts); ``dataset.path``, ``dataset.schema_path`` and ``search_space`` must name existing
    files inside ``data_dir`` (a search space may also come from the built-in ``search_spaces/``),
    in a format their loader parses (never a pickle or a checkpoint). The search space and preset
    are loaded, so a technique outside the registry is refused here rather than in the driver.
    """
    from autocompress.data.tabular import DATA_EXTENSIONS
    from autocompress.search.space import default_search_space_dir, load_search_space

    if spec.search.storage_path is not None:
        raise AutocompressError(
            "spec.search.storage_path: not accepted over the API; the server keeps each job's run "
            "in its work folder"
        )
    tracking = spec.tracking
    if tracking is not None:
        scheme = tracking.mlflow_uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in SERVER_TRACKING_SCHEMES:
            raise AutocompressError(
                f"spec.tracking.mlflow_uri: a {scheme!r} URI would write files on this server; over the "
                f"API use a tracking server or database ({', '.join(SERVER_TRACKING_SCHEMES)})"
            )
        location = tracking.artifact_location
        if location is not None and ("://" not in location or location.lower().startswith("file:")):
            raise AutocompressError(
                "spec.tracking.artifact_location: a local folder is not accepted over the API; give a "
                "URI of the artifact store (s3://, gs://, https://, ...) or leave it to the tracking server"
            )
    for where, free_form in (("spec.train", spec.train), ("spec.dataset.options", spec.dataset.options)):
        if _nesting_depth(free_form, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
            raise AutocompressError(f"{where}: nested deeper than {MAX_SPEC_DEPTH} levels")

    def resolve(value: str, where: str, roots: list[Path], suffixes: tuple[str, ...] | None) -> str:
        if not roots:
            raise AutocompressError(
                f"{where}: this server takes no file paths in specs (its data folder, "
                "AUTOCOMPRESS_DATA_DIR, is not set)"
            )
        errors = []
        for root in roots:
            try:
                resolved = inside(root, value, where)
            except AutocompressError as exc:
                errors.append(str(exc))
                continue
            if resolved.exists():
                check_format(resolved, where, suffixes)
                return str(resolved)
            errors.append(f"{where}: {value!r} does not exist")
        raise AutocompressError(errors[-1])

    data_roots = [settings.data_dir] if settings.data_dir is not None else []
    formats = {
        "path": DATA_EXTENSIONS if spec.dataset.kind == "tabular" else None,  # Criteo days have no suffix
        "schema_path": YAML_SUFFIXES,
    }
    dataset_update = {
        name: resolve(value, f"spec.dataset.{name}", data_roots, formats[name])
        for name in ("path", "schema_path")
        if (value := getattr(spec.dataset, name)) is not None
    }
    update: dict[str, Any] = {}
    if dataset_update:
        update["dataset"] = spec.dataset.model_copy(update=dataset_update)
    if spec.search_space is not None:
        update["search_space"] = resolve(
            spec.search_space,
            "spec.search_space",
            [default_search_space_dir(), *data_roots],
            YAML_SUFFIXES,
        )
    space_field = "spec.search_space" if spec.search_space is not None else "spec.preset"
    try:
        load_search_space(spec.family, spec.preset, update.get("search_space"))
    except AutocompressError as exc:
        raise AutocompressError(f"{space_field}: {exc}") from None
    return spec.model_copy(update=update) if update else spec
