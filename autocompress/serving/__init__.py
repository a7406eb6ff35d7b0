"""Serving library: request validation, ranking, two-tower embeddings and ONNX Runtime runners.

Everything the Ray Serve application (``serve_app``) and the API routes do with a model lives
here and is tested without Ray or HTTP: a request's rows are checked against the model's
FeatureSchema and turned into ONNX inputs (``RequestEncoder``), a ``ModelCatalog`` finds a
registered model by id or alias and checks that its file is inside the artifact root and opens
in ONNX Runtime (``check_onnx_loads``), and a ``ModelRunner`` holds its ONNX Runtime session.
``register_trial`` registers any finished trial of a job as a model (the winner included).
"""

from autocompress.serving._catalog import ModelCatalog, ServedModel, check_onnx_loads, resolve_artifact
from autocompress.serving._encoders import ENCODERS_FILE, FeatureEncoders, load_encoders
from autocompress.serving._payload import (
    MAX_ROWS,
    Features,
    PackedFeatures,
    PayloadError,
    RequestEncoder,
    join_features,
    pack_features,
    probabilities,
    split_rows,
    top_k,
    unpack_features,
)
from autocompress.serving._predictor import LocalPredictor, Predictor, deploy_job_winner
from autocompress.serving._registration import (
    MODEL_NAME_PATTERN,
    MODELS_FOLDER,
    default_model_name,
    register_trial,
)
from autocompress.serving._runner import ModelRunner
from autocompress.serving._two_tower import SIDES, Side, TowerTensors, extract_towers, find_towers

__all__ = [
    "ENCODERS_FILE",
    "MAX_ROWS",
    "MODELS_FOLDER",
    "MODEL_NAME_PATTERN",
    "SIDES",
    "FeatureEncoders",
    "Features",
    "LocalPredictor",
    "ModelCatalog",
    "ModelRunner",
    "PackedFeatures",
    "PayloadError",
    "Predictor",
    "RequestEncoder",
    "ServedModel",
    "Side",
    "TowerTensors",
    "check_onnx_loads",
    "default_model_name",
    "deploy_job_winner",
    "extract_towers",
    "find_towers",
    "join_features",
    "load_encoders",
    "pack_features",
    "probabilities",
    "register_trial",
    "resolve_artifact",
    "split_rows",
    "top_k",
    "unpack_features",
]
