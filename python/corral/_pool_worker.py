"""The worker corral's pools start (`python -m corral._pool_worker`): it becomes what a spawn
child of the pool's process would be (see _spawn), says hello to `corral mux`, then answers one
job line at a time with one task, `call`.

A job's input names the function ("f": "module:qualname", or "fp": it pickled) and carries the
arguments: "a" a JSON list of them; "p" a pickled tuple of them; "pk" a pickled (args, kwargs);
"pa" a pickled chunk of single arguments; "pc" a pickled chunk of argument tuples (starmap); or
"s" the name of a file in the pool's directory holding the pickle, with "k" its kind. The output
is {"j": result} when JSON carries it exactly, else {"b": base64 pickle} or {"s": file} of
("v", result), ("x", exception record) or ("c", results, {position: exception record}).

The worker's stdout and stderr are the pool process's own (passed down as CORRAL_POOL_STDOUT
and CORRAL_POOL_STDERR), as a multiprocessing child's are; the protocol keeps private copies of
the pipes. When corral closes its input, the worker runs its exit handlers and exits, without
waiting for threads a task left running.
"""

import base64
import gc
import itertools
import json
import os
import pickle
import sys

from corral import _spawn
from corral._codec import SPILL_BYTES, plain, spill, unspill

_HIGHEST = pickle.HIGHEST_PROTOCOL
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_functions = {}
# Whether the pool is a concurrent.futures executor (see _spawn.prepare).
_executor = False
_spilled = 0
HELLO = b'{"corral_protocol":1,"tasks":["call"]}\n'


def _loads(data):
    """pickle.loads with the cyclic garbage collector paused (this worker is the only thread
    that could mind): unpickling a chunk of containers, a list of lists, otherwise sets off a
    collection every few hundred of them, a fifth of a worker's time on a chunk of tiny tasks.
    Nothing is lost: the next collection looks at what it made."""
    if not gc.isenabled():
        return pickle.loads(data)
    gc.disable()
    try:
        return pickle.loads(data)
    finally:
        gc.enable()


def _function(job):
    name = job.get("f")
    if name is not None:
        fn = _functions.get(name)
        if fn is None:
            import importlib

            module_name, _, qualname = name.partition(":")
            fn = importlib.import_module(module_name)
            for part in qualname.split("."):
                fn = getattr(fn, part)
            _functions[name] = fn
        return fn
    pickled = job["fp"]
    fn = _functions.get(pickled)
    if fn is None:
        fn = _functions[pickled] = pickle.loads(base64.b64decode(pickled))
    return fn


def _arguments(job, directory):
    """(kind, arguments) of a job's input."""
    if "a" in job:
        return "a", job["a"]
    if "s" in job:
        # Left for the pool to remove once answered: a retry reads it again.
        return job["k"], _loads(unspill(directory, job["s"], remove=False))
    for kind in ("p", "pk", "pa", "pc"):
        if kind in job:
            return kind, _loads(base64.b64decode(job[kind]))
    raise ValueError(f"a job without arguments: {sorted(job)}")


def _pickled(raw, directory):
    global _spilled
    data = pickle.dumps(raw, protocol=_HIGHEST)
    if len(data) > SPILL_BYTES:
        _spilled += 1
        name = spill(directory, f"out-{os.getpid()}-{_spilled}", data)
        return b'{"s":"%s"}' % name.encode()
    return b'{"b":"%s"}' % base64.b64encode(data)


def _failure(exc, directory):
    return _pickled(("x", _spawn.exception_record(exc)), directory)


def _caught():
    """What a job's failure may be: for an executor any exception, SystemExit too (as
    concurrent.futures' workers catch them); for a pool an Exception (multiprocessing's let
    the others end the worker)."""
    return BaseException if _executor else Exception


def _unpicklable(exc, value):
    """What a result that cannot be pickled fails with: the pickling error itself for an
    executor (as concurrent.futures), multiprocessing's MaybeEncodingError for a pool."""
    if _executor:
        return exc
    from multiprocessing.pool import MaybeEncodingError

    return MaybeEncodingError(exc, value)


def _result(result, directory):
    if plain(result):
        text = _encode(result)
        if len(text) <= SPILL_BYTES:
            try:
                return b'{"j":%s}' % text.encode()
            except UnicodeEncodeError:
                # Lone surrogates are not UTF-8: the value travels pickled.
                pass
    try:
        return _pickled(("v", result), directory)
    except _caught() as exc:  # a result that cannot be pickled
        return _failure(_unpicklable(exc, result), directory)


def _chunk(fn, calls, star, directory):
    """Calls fn on each item of a chunk: one item's exception is not the whole chunk's. The
    calls run inside list.extend over map, at C speed; an exception stops extend with the
    results before it kept, and map goes on from the next item."""
    results = []
    errors = {}
    calls = itertools.starmap(fn, calls) if star else map(fn, calls)
    while True:
        try:
            results.extend(calls)
            break
        except _caught() as exc:  # any failure of user code is the item's
            errors[len(results)] = _spawn.exception_record(exc)
            results.append(None)
    try:
        return _pickled(("c", results, errors), directory)
    except Exception:  # noqa: BLE001 - find the results that cannot be pickled, one by one
        for position, result in enumerate(results):
            try:
                pickle.dumps(result, protocol=_HIGHEST)
            except Exception as exc:  # noqa: BLE001
                errors[position] = _spawn.exception_record(_unpicklable(exc, result))
                results[position] = None
        return _pickled(("c", results, errors), directory)


def answer(line, directory):
    """The response line to one request line."""
    request = json.loads(line)
    request_id = _raw_id(line, request)
    job = request["input"]
    try:
        kind, args = _arguments(job, directory)
    except Exception as exc:  # noqa: BLE001 - the arguments do not unpickle here
        return b'{"id":%s,"output":%s}\n' % (
            request_id,
            _pickled(("u", _spawn.exception_record(exc)), directory),
        )
    try:
        fn = _function(job)
        if kind == "pa" or kind == "pc":
            output = _chunk(fn, args, kind == "pc", directory)
        else:
            result = fn(*args[0], **args[1]) if kind == "pk" else fn(*args)
            output = _result(result, directory)
    except _caught() as exc:  # the job's exception, for the caller
        output = _failure(exc, directory)
    return b'{"id":%s,"output":%s}\n' % (request_id, output)


def _raw_id(line, request):
    """The request's id as corral wrote it (between `{"id":` and `,"task":`)."""
    if line.startswith(b'{"id":'):
        end = line.find(b',"task":')
        if end > 0:
            return line[6:end]
    return _encode(request["id"]).encode()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _take_stdio():
    """Private copies of the protocol's pipes; fds 0, 1 and 2 become /dev/null and the pool
    process's own stdout and stderr, for the user's code."""
    requests, answers = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    stdout = os.environ.pop("CORRAL_POOL_STDOUT", "")
    stderr = os.environ.pop("CORRAL_POOL_STDERR", "")
    if stderr.isdigit():
        os.dup2(int(stderr), 2)
        os.close(int(stderr))
    if stdout.isdigit():
        os.dup2(int(stdout), 1)
        os.close(int(stdout))
    else:
        # What tasks print never goes into the protocol.
        os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    return requests, answers


def _exit(status):
    # What an exiting interpreter runs, but not its wait for threads a task left running.
    import atexit

    try:
        atexit._run_exitfuncs()
    except Exception:  # noqa: BLE001 - an exit handler's failure ends nothing more
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - nothing to flush into
            pass
    # At once: a thread a task left running must not keep the worker alive.
    os._exit(status)


def main():
    directory = os.environ["CORRAL_POOL_DIR"]
    requests_fd, answers_fd = _take_stdio()
    global _executor
    try:
        _executor = _spawn.prepare(directory)
    except BaseException as exc:  # noqa: BLE001 - reported to the pool, whatever it is
        _spawn.report_start_failure(directory, exc)
        _exit(1)
    try:
        _write_all(answers_fd, HELLO)
        with open(requests_fd, "rb", buffering=256 * 1024) as requests:
            for line in requests:
                # Each answer goes out at once: corral knows which job is running from the
                # answers it has seen, so holding one back would blame the wrong job for a crash.
                _write_all(answers_fd, answer(line, directory))
    except BrokenPipeError:
        pass
    _exit(0)


if __name__ == "__main__":
    main()
