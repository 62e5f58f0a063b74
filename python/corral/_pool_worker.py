"""The worker corral.Pool starts: one task, `call`, that runs a module-level function by name.

A job's input is {"f": "module:qualname", "a": [args...]} with JSON arguments, or
{"f": ..., "p": base64 pickle of the argument tuple} for arguments JSON cannot carry. The
output is {"j": result} or {"p": base64 pickle of the result}. A chunk of calls is
{"f": ..., "pc": base64 pickle of a list of argument tuples}, answered with {"pr": base64
pickle of a list of ("v", result) or ("e", exception type, message)}: pickle, written in C, is
what makes chunks of tiny tasks cheap. Functions are found as
multiprocessing's spawn start method finds them: by module and qualified name, the parent's
__main__ script run again here as __mp_main__ (CORRAL_POOL_MAIN names it).
"""

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
    if "pc" in job:
        return {"pr": _pack_outcomes([_call_one(fn, args) for args in unpack(job["pc"])])}
    if "p" in job:
        args = unpack(job["p"])
    else:
        args = job["a"]
    return _output(fn(*args))


def _call_one(fn, args):
    """One call of a chunk: ("v", result), or ("e", type, message) if it raised (the traceback
    goes to the log), so that one item's exception is not the whole chunk's."""
    try:
        return ("v", fn(*args))
    except Exception as exc:  # noqa: BLE001 - any failure of user code is the item's error
        traceback.print_exc(file=sys.stderr)
        return ("e", type(exc).__name__, str(exc) or type(exc).__name__)


def _pack_outcomes(outcomes):
    """The outcomes of a chunk, pickled; a result that cannot be pickled is its item's error."""
    try:
        return pack(outcomes)
    except Exception:  # noqa: BLE001 - find the culprits one by one
        safe = []
        for outcome in outcomes:
            try:
                pack(outcome)
                safe.append(outcome)
            except Exception as exc:  # noqa: BLE001
                safe.append(("e", type(exc).__name__, f"the result cannot be pickled: {exc}"))
        return pack(safe)


def _initialize():
    _load_main()
    spec = os.environ.get("CORRAL_POOL_INIT")
    if spec:
        name, pickled = json.loads(spec)
        _function(name)(*unpack(pickled))


if __name__ == "__main__":
    run(initializer=_initialize)
