"""Serving library: payloads, aliases, batching, ONNX Runtime runners, and the prediction service.

Everything the Ray Serve application (``serve_app``) and the API routes do with a model lives
here and is tested without Ray or HTTP: a request's feature values (rows, columns, or Open
Inference Protocol tensors, ``_oip``) are checked against the model's FeatureSchema and turned
into ONNX inputs (``RequestEncoder``), a ``ModelCatalog`` finds a registered model by id and checks
that its file is inside the artifact root and opens in ONNX Runtime (``check_onnx_loads``), a
``ModelRunner`` holds its ONNX Runtime session, a ``ModelBatcher`` runs a model's concurrent
requests together, an ``AliasTable`` resolves aliases from memory, and ``PredictionService`` ties
them into what a serving replica answers. ``register_trial`` registers any finished trial of a
job as a model (the winner included).
"""

from autocompress.serving._aliases import AliasTable, keep_aliases_fresh, read_aliases
from autocompress.serving._batcher import BatchPolicy, ModelBatcher
from autocompress.serving._catalog import ModelCatalog, ServedModel, check_onnx_loads, resolve_artifact
from autocompress.serving._encoders import ENCODERS_FILE, FeatureEncoders, load_encoders
from autocompress.serving._oip import infer_columns, infer_response, model_metadata
from autocompress.serving._payload import (
    MAX_ROWS,
    Columns,
    Features,
    PayloadError,
    RequestEncoder,
    join_features,
    probabilities,
    split_rows,
    top_k,
)
from autocompress.serving._predictor import LocalPredictor, deploy_job_winner
from autocompress.serving._registration import (
    MODEL_NAME_PATTERN,
    MODELS_FOLDER,
    default_model_name,
    register_trial,
)
from autocompress.serving._runner import ModelRunner
from autocompress.serving._service import PredictionService, RunnerSource, reuse_opened
from autocompress.serving._two_tower import SIDES, Side, TowerTensors, extract_towers, find_towers

__all__ = [
    "ENCODERS_FILE",
    "MAX_ROWS",
    "MODELS_FOLDER",
    "MODEL_NAME_PATTERN",
    "SIDES",
    "AliasTable",
    "BatchPolicy",
    "Columns",
    "FeatureEncoders",
    "Features",
    "LocalPredictor",
    "ModelBatcher",
    "ModelCatalog",
    "ModelRunner",
    "PayloadError",
    "PredictionService",
    "RequestEncoder",
    "RunnerSource",
    "ServedModel",
    "Side",
    "TowerTensors",
    "check_onnx_loads",
    "default_model_name",
    "deploy_job_winner",
    "extract_towers",
    "find_towers",
    "infer_columns",
    "infer_response",
    "join_features",
    "keep_aliases_fresh",
    "load_encoders",
    "model_metadata",
    "probabilities",
    "read_aliases",
    "register_trial",
    "resolve_artifact",
    "reuse_opened",
    "split_rows",
    "top_k",
]
