"""The one exception type a user can cause; its message names the field and what is allowed."""

from collections.abc import Iterable, Mapping
from typing import Any


class AutocompressError(ValueError):
    """Bad input from a user: a spec field, a file, a schema that does not match the data.

    The CLI prints the message without a traceback and the API answers it with a 4xx, so the
    message must say which field or file is wrong and what would be accepted instead.
    """


def refuse_unknown_fields(where: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Strict loading: refuse a non-mapping, or keys outside ``allowed``, naming them and the allowed ones."""
    if not isinstance(data, Mapping):
        raise AutocompressError(f"{where}: expected a mapping, got {type(data).__name__}")
    allowed_set = set(allowed)
    unknown = sorted(str(k) for k in set(data) - allowed_set)
    if unknown:
        raise AutocompressError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed_set)}")
