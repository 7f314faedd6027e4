"""JSON records: values made JSON-able, written atomically."""

from __future__ import annotations

import json
import math

import numpy as np

from .files import write_text

__all__ = ["jsonable", "write_json"]


def jsonable(value):
    """``value`` with numpy scalars as Python numbers, dict keys as strings, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path, value, indent=1):
    """Write :func:`jsonable` ``(value)`` to ``path`` atomically; returns ``path``."""
    return write_text(path, json.dumps(jsonable(value), indent=indent))
