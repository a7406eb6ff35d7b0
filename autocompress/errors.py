"""The one exception type a user can cause; its message names the field and what is allowed."""


class AutocompressError(ValueError):
    """Bad input from a user: a spec field, a file, a schema that does not match the data.

    The CLI prints the message without a traceback and the API answers it with a 4xx, so the
    message must say which field or file is wrong and what would be accepted instead.
    """
