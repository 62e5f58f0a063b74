"""How corral.Pool carries arguments, results and exceptions between the caller and its
workers.

Values go as JSON when it gives them back exactly, and as pickle (base64, inside the JSON line)
when it would not (tuples, sets, bytes, objects, dicts with keys that are not strings, NaN, text
with lone surrogates). A payload larger than SPILL_BYTES goes through a file in the pool's
private directory instead of the pipes, so that no size that fits in memory is refused.
An exception goes as a record (see _spawn.exception_record) and comes back as itself, with the
worker's traceback as its __cause__, as multiprocessing does.
"""

import base64
import math
import os
import pickle

# Larger payloads travel through a file.
SPILL_BYTES = 1 << 20

_HIGHEST = pickle.HIGHEST_PROTOCOL


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
    return base64.b64encode(pickle.dumps(value, protocol=_HIGHEST)).decode()


def unpack(text):
    return pickle.loads(base64.b64decode(text))


def spill(directory, name, data):
    """Writes data (bytes) to a new file `name` of directory (mode 0600); its name."""
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return name


def unspill(directory, name, remove=True):
    """The bytes of a spilled file; removed unless told (an input stays until its job is
    answered: a retry reads it again)."""
    if os.sep in name or name.startswith("."):
        raise ValueError(f"not a spilled file's name: {name!r}")
    path = os.path.join(directory, name)
    with open(path, "rb") as f:
        data = f.read()
    if remove:
        os.unlink(path)
    return data


def remove_spilled(directory, name):
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        pass


def exception(record, executor=False):
    """The exception a record (from _spawn.exception_record) stands for, with the worker's
    traceback as its __cause__ (concurrent.futures' kind of it for an executor)."""
    from corral._errors import RemoteError, remote_traceback

    pickled, name, message, text = pickle.loads(record)
    exc = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:  # noqa: BLE001 - an exception class missing on this side
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        exc = RemoteError(name, message)
    exc.__cause__ = remote_traceback(text, executor)
    return exc
