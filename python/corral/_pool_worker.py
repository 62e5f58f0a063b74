"""The worker corral.Pool starts: one task, `call`, that runs a module-level function by name.

A job's input is {"f": "module:qualname", "a": [args...]} with JSON arguments, or
{"f": ..., "p": base64 pickle of the argument tuple} for arguments JSON cannot carry. The
output is {"j": result} or {"p": base64 pickle of the result}. A chunk is {"f": ...,
"pa": base64 pickle of a list of single arguments} (or "pc", a list of argument tuples, for
starmap), answered with {"pr": base64 pickle of the list of results} and, if some raised,
{"pe": base64 pickle of {position: (exception type, message)}}: pickle, written in C, is what
makes chunks of tiny tasks cheap. Functions are found as
multiprocessing's spawn start method finds them: by module and qualified name, the parent's
__main__ script run again here as __mp_main__ (CORRAL_POOL_MAIN names it).
"""

import gc
import importlib
import json
import os
import runpy
import sys
import traceback

from corral._codec import pack, plain, unpack
from corral.worker import run, task

_functions = {}


def _load_main():
    path = os.environ.get("CORRAL_POOL_MAIN")
    if not path:
        return
    main = type(sys)("__mp_main__")
    main.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__mp_main__"] = main
    sys.modules["__main__"] = main


def _function(name):
    fn = _functions.get(name)
    if fn is None:
        module_name, _, qualname = name.partition(":")
        if module_name == "__main__":
            module_name = "__mp_main__"
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        fn = _functions[name] = obj
    return fn


def _output(result):
    if plain(result):
        return {"j": result}
    return {"p": pack(result)}


@task
def call(job):
    fn = _function(job["f"])
    if "pa" in job:
        return _call_chunk(fn, _quietly(unpack, job["pa"]), False)
    if "pc" in job:
        return _call_chunk(fn, _quietly(unpack, job["pc"]), True)
    if "p" in job:
        args = unpack(job["p"])
    else:
        args = job["a"]
    return _output(fn(*args))


def _quietly(convert, value):
    """convert(value) with the cyclic garbage collector held off: (un)pickling a chunk makes
    thousands of objects at once, all alive, and collecting while it does is wasted work."""
    if not gc.isenabled():
        return convert(value)
    gc.disable()
    try:
        return convert(value)
    finally:
        gc.enable()


def _call_chunk(fn, calls, star):
    """Calls fn on each item of a chunk: {"pr": pickled results}, plus {"pe": pickled
    {position: (exception type, message)}} for the items that raised (their traceback goes to
    the log): one item's exception is not the whole chunk's."""
    results = []
    errors = {}
    for args in calls:
        try:
            results.append(fn(*args) if star else fn(args))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is the item's error
            traceback.print_exc(file=sys.stderr)
            errors[len(results)] = (type(exc).__name__, str(exc) or type(exc).__name__)
            results.append(None)
    try:
        packed = _quietly(pack, results)
    except Exception:  # noqa: BLE001 - find the culprits one by one
        for position, result in enumerate(results):
            try:
                pack(result)
            except Exception as exc:  # noqa: BLE001
                errors[position] = (type(exc).__name__, f"the result cannot be pickled: {exc}")
                results[position] = None
        packed = pack(results)
    if errors:
        return {"pr": packed, "pe": pack(errors)}
    return {"pr": packed}


def _initialize():
    _load_main()
    spec = os.environ.get("CORRAL_POOL_INIT")
    if spec:
        name, pickled = json.loads(spec)
        _function(name)(*unpack(pickled))


if __name__ == "__main__":
    run(initializer=_initialize)
