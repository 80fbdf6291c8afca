"""JSON for the server: orjson (several times faster) with the standard library behind it.

orjson refuses some documents that are valid JSON and that the serving contract answers
precisely: integers beyond 64 bits (a categorical id of 2**64 is a 422 naming its row and
field, not an invalid body), and numbers beyond float64. Those fall back to `json`, which
reads them, so only the fast path differs. NaN and Infinity, which JSON does not have,
are refused unless `allow_nan` (v2 clients write a missing FP32 value as NaN).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(body: bytes, allow_nan: bool = False) -> Any:
    """The parsed document; raises ValueError (or RecursionError, nested too deeply)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body, parse_constant=None if allow_nan else _reject_constant)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")
