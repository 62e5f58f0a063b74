"""The worker corral.Pool starts: one task, `call`, that runs a module-level function by name.

A job's input is {"f": "module:qualname", "a": [args...]} with JSON arguments, or
{"f": ..., "p": base64 pickle of the argument tuple} for arguments JSON cannot carry. The
output is {"j": result} or {"p": base64 pickle of the result}. Functions are found as
multiprocessing's spawn start method finds them: by module and qualified name, the parent's
__main__ script run again here as __mp_main__ (CORRAL_POOL_MAIN names it).
"""

import importlib
import json
import os
import runpy
import sys

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
    if "p" in job:
        args = unpack(job["p"])
    else:
        args = job["a"]
    return _output(fn(*args))


def _initialize():
    _load_main()
    spec = os.environ.get("CORRAL_POOL_INIT")
    if spec:
        name, pickled = json.loads(spec)
        _function(name)(*unpack(pickled))


if __name__ == "__main__":
    run(initializer=_initialize)
