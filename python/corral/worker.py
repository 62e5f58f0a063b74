"""corral.worker: turn plain Python functions into a corral worker (standard library only).

A worker script registers tasks and calls run()::

    from corral.worker import task, run

    @task
    def sum_squares(xs):
        return sum(x * x for x in xs)

    run()

and corral starts as many of them as it has workers::

    corral run --worker-cmd 'python3 my_worker.py' jobs.jsonl

It speaks corral's stdio protocol (docs/worker-protocol.md): a hello line, then one JSON
request per line on stdin and one JSON response per line on stdout, in order. A task gets the
job's "input" (any JSON, as Python values) and returns its output (anything json.dumps takes).
A task that raises answers with an error: corral writes a task_error result carrying the
exception's type and message, and the traceback goes to corral's log.

Output that user code prints cannot corrupt the protocol: before any task or initializer runs,
file descriptor 1 (and sys.stdout) is pointed at stderr, which corral logs with the worker's
pid, and stdin at /dev/null; the protocol keeps private copies of both.

run(initializer=f, initargs=(...)) calls f once per worker before its hello, the place to load
a model or open a database, as multiprocessing.Pool's initializer does.
"""

import json
import os
import sys
import traceback

__all__ = ["PROTOCOL_VERSION", "run", "task", "tasks"]

#: The stdio protocol version this helper speaks.
PROTOCOL_VERSION = 1

_tasks = {}


def task(fn=None, *, name=None):
    """Register a function as a task, under its own name or ``name``.

    Use as ``@task``, ``@task(name="other")`` or ``task(fn, name="other")``.
    """

    def register(f):
        _tasks[name or f.__name__] = f
        return f

    if fn is None:
        return register
    return register(fn)


def tasks():
    """The registered tasks, by name."""
    return dict(_tasks)


def _protocol_fds():
    """Private copies of stdin and stdout for the protocol; fds 0 and 1 are then taken away
    from user code (stdin reads nothing, stdout goes to stderr)."""
    requests = os.dup(0)
    answers = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr
    return requests, answers


def _write_all(fd, data):
    written = os.write(fd, data)
    while written < len(data):
        data = data[written:]
        written = os.write(fd, data)


# One encoder for every answer: json.dumps with any option builds a new one per call. NaN and
# infinities are refused, as they are not JSON.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _utf8(line):
    """An answer line as bytes. A lone surrogate, which only a JSON string can hold (a line of
    `--lines` that was not UTF-8 comes as one, os.fsdecode's surrogateescape), is written as its
    escape, \\udcXX, as corral wrote it."""
    return line.encode("utf-8", "backslashreplace")


def _raw_id(line, request):
    """The request's id as JSON text. corral writes `{"id":<id>,"task":...`, so the id is
    echoed as it came rather than re-encoded (`,"task":` cannot occur inside an id: a quote in
    a JSON string is escaped); a request written otherwise has its id encoded again."""
    if line.startswith(b'{"id":'):
        end = line.find(b',"task":')
        if end > 0:
            return line[6:end].decode()
    return _encode(request["id"])


def _error(request_id, exc_type, message):
    error = _encode({"message": message, "type": exc_type})
    return _utf8(f'{{"id":{request_id},"error":{error}}}\n')


def _answer(registry, line):
    """The response line to one request line."""
    request = json.loads(line)
    request_id = _raw_id(line, request)
    fn = registry.get(request["task"])
    if fn is None:
        return _error(request_id, "UnknownTask", f"this worker has no task {request['task']!r}")
    try:
        output = fn(request.get("input"))
    except Exception as exc:  # noqa: BLE001 - any failure of user code is the job's error
        traceback.print_exc(file=sys.stderr)
        return _error(request_id, type(exc).__name__, str(exc) or type(exc).__name__)
    try:
        return _utf8(f'{{"id":{request_id},"output":{_encode(output)}}}\n')
    except (TypeError, ValueError) as exc:
        return _error(request_id, type(exc).__name__, f"output is not JSON: {exc}")


def run(initializer=None, initargs=()):
    """Serve the registered tasks to the corral that started this process, until it closes
    stdin. Returns then (the script should end, with status 0).

    Run by hand, outside corral, it says how to start it and exits with status 2.
    """
    if "CORRAL_SUPERVISOR_PID" not in os.environ:
        script = sys.argv[0] if sys.argv and sys.argv[0] else "my_worker.py"
        names = ", ".join(_tasks) or "none yet"
        sys.stderr.write(
            f"this is a corral worker with the tasks: {names}.\n"
            f"Run it with: corral run --worker-cmd 'python3 {script}' jobs.jsonl\n"
        )
        sys.exit(2)
    requests_fd, answers_fd = _protocol_fds()
    if initializer is not None:
        initializer(*initargs)
    registry = dict(_tasks)
    hello = {"corral_protocol": PROTOCOL_VERSION, "tasks": list(registry)}
    try:
        _write_all(answers_fd, (_encode(hello) + "\n").encode())
        with open(requests_fd, "rb", buffering=256 * 1024) as requests:
            for line in requests:
                # Each answer goes out at once: corral knows which job is running from the
                # answers it has seen, so holding one back would blame the wrong job for a crash.
                _write_all(answers_fd, _answer(registry, line))
    except BrokenPipeError:
        # corral is gone; nobody is left to answer.
        pass
    finally:
        os.close(answers_fd)
