"""How corral.Pool carries arguments and results: JSON when it gives the value back exactly,
pickle (base64, inside the JSON line) when it would not (tuples, sets, bytes, objects, dicts
with keys that are not strings, NaN)."""

import base64
import math
import pickle


def plain(value, depth=0):
    """Whether JSON round-trips value as the very same types and values."""
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 50:
        return False
    if kind is list:
        return all(plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and plain(v, depth + 1) for k, v in value.items())
    return False


def pack(value):
    """A base64 pickle of value, as text."""
    return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def unpack(text):
    return pickle.loads(base64.b64decode(text))
