"""Registered models as the serving side sees them: found by id or alias, checked, cached.

A model is servable when the store knows it, its ONNX file resolves (symlinks followed) to a
file inside the artifact root (the API never opens a path a database row points at elsewhere)
and ONNX Runtime opens that file: a truncated or overwritten artifact is refused before a deploy
or promote moves an alias to it, so the alias keeps serving the model it had.
Its target (the intra-op threads and provider to run it with) is the target of the job that
produced it; a model registered outside a job runs with the default target.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.serving._encoders import load_encoders
from autocompress.serving._payload import RequestEncoder
from autocompress.spec import Target
from autocompress.store import ConflictError, DeploymentRecord, ModelRecord, NotFoundError, Store


@dataclass(frozen=True)
class ServedModel:
    """A registered model checked for serving: ONNX path inside the root, schema, target, request encoder."""

    record: ModelRecord
    path: Path
    schema: FeatureSchema
    target: Target
    encoder: RequestEncoder
    file_stamp: tuple[int, int] = (0, 0)  # (mtime ns, size) of the file when it was checked

    @property
    def id(self) -> str:
        return self.record.id


def resolve_artifact(path: str | Path, artifact_root: str | Path, base_dir: str | Path | None = None) -> Path:
    """The model file's real path, refused (``ConflictError``) unless it is a file inside ``artifact_root``.

    A relative path is taken from ``base_dir`` (default: the working directory), where the
    search that registered it ran.
    """
    root = Path(artifact_root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = Path(base_dir if base_dir is not None else Path.cwd()) / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ConflictError(
            f"model artifact {str(path)!r} is outside the artifact root {str(root)!r}; "
            "only files under the artifact root are served"
        )
    if not resolved.is_file():
        raise ConflictError(f"model artifact {str(path)!r} does not exist (looked at {str(resolved)!r})")
    return resolved


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size)


def check_onnx_loads(path: Path, model_id: str) -> None:
    """Refuse (``ConflictError``) a model file ONNX Runtime cannot open: truncated, overwritten, not ONNX.

    Opened on the CPU with graph optimisations off: this checks the file, not the serving machine
    (the model's own target may name a provider this process does not have).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own classes (InvalidProtobuf, Fail, InvalidGraph)
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConflictError(
            f"model {model_id!r} cannot be served: its ONNX file {str(path)!r} does not load in "
            f"ONNX Runtime ({type(exc).__name__}: {detail})"
        ) from None


class ModelCatalog:
    """Looks registered models up in the store and keeps the last ``cache_size`` checked ones.

    A registered model's file should never change; if it does (its size or modification time
    differ from when it was checked), the entry is checked again, so an artifact corrupted on
    disk is refused rather than served from the cache. Aliases move, so they are read from the
    store on every call.
    """

    def __init__(
        self,
        store: Store,
        artifact_root: str | Path,
        *,
        base_dir: str | Path | None = None,
        cache_size: int = 256,
    ) -> None:
        if cache_size < 1:
            raise AutocompressError(f"cache_size must be >= 1, got {cache_size}")
        self.store = store
        self.artifact_root = Path(artifact_root).resolve()
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        self._cache: OrderedDict[str, ServedModel] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def get(self, model_id: str) -> ServedModel:
        """The servable model with this id: ``NotFoundError`` if unknown, ``ConflictError`` if unservable."""
        with self._lock:
            cached = self._cache.get(model_id)
        if cached is not None and self._unchanged(cached):
            with self._lock:
                if model_id in self._cache:
                    self._cache.move_to_end(model_id)
            return cached
        served = self._load(self.store.get_model(model_id))
        with self._lock:
            self._cache[model_id] = served
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return served

    def active(self, alias: str) -> DeploymentRecord:
        """The alias's active deployment; ``NotFoundError`` when the alias serves nothing."""
        deployment = self.store.active_deployment(alias)
        if deployment is None:
            raise NotFoundError(f"alias: {alias!r} has no active deployment")
        return deployment

    def for_alias(self, alias: str) -> ServedModel:
        """The model the alias serves now."""
        return self.get(self.active(alias).model_id)

    @staticmethod
    def _unchanged(served: ServedModel) -> bool:
        try:
            return _file_stamp(served.path) == served.file_stamp
        except OSError:
            return False

    def _load(self, record: ModelRecord) -> ServedModel:
        path = resolve_artifact(record.path, self.artifact_root, self.base_dir)
        stamp = _file_stamp(path)
        try:
            schema = FeatureSchema.from_dict(record.feature_schema)
            encoder = RequestEncoder(schema, load_encoders(path))
        except AutocompressError as exc:
            raise ConflictError(f"model {record.id!r} cannot be served: {exc}") from None
        check_onnx_loads(path, record.id)
        return ServedModel(
            record=record,
            path=path,
            schema=schema,
            target=self._target(record),
            encoder=encoder,
            file_stamp=stamp,
        )

    def _target(self, record: ModelRecord) -> Target:
        spec: dict[str, Any] = {}
        if record.job_id is not None:
            try:
                spec = self.store.get_job(record.job_id).spec
            except NotFoundError:
                spec = {}
        try:
            return Target.from_dict(spec.get("target") or {}, where="job.target")
        except AutocompressError as exc:
            raise ConflictError(f"model {record.id!r} cannot be served: {exc}") from None
