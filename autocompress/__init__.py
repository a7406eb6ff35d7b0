"""autocompress: Ray-distributed AutoML compression for e-commerce ranking and retrieval models."""

from autocompress.errors import AutocompressError

__all__ = ["AutocompressError"]
__version__ = "0.1.0"
