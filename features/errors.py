"""Errors the user must act on (bad config, bad files); their messages name what to fix."""

MAX_MESSAGE = 1000  # characters of an error message: an echoed value must not bury the rest


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to at most `limit` characters, ending with how much was cut (the start,
    which names the file or key at fault, is kept)."""
    if len(text) <= limit:
        return text
    note = f" … (cut from {len(text):,} characters)"
    return text[: limit - len(note)] + note


class DataError(ValueError):
    """A problem with the input data or its conf; the message names file, row or column.

    The message is capped at MAX_MESSAGE characters here, once for every raiser: a
    parser's message can quote megabytes of a broken file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(shorten(message))
