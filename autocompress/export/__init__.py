"""Export: torch -> ONNX (checked against torch), and ONNX Runtime sessions configured for a Target."""

from autocompress.export.session import create_session, feed
from autocompress.export.torch_to_onnx import ExportError, ExportResult, export_onnx

__all__ = ["ExportError", "ExportResult", "create_session", "export_onnx", "feed"]
