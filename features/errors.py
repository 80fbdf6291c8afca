"""Errors the user must act on (bad config, bad files); their messages name what to fix."""


class DataError(ValueError):
    """A problem with the input data or its conf; the message names file, row or column."""
