"""corral.Pool: each map call is a `corral run` child of this process, fed by a thread and read
as an iterator (the package's docstring tells the whole story)."""

import itertools
import json
import os
import shlex
import subprocess
import sys
import threading

from corral._binary import corral_binary
from corral._codec import pack, plain, unpack


class JobFailed(Exception):
    """A job that did not produce a result: it raised (`kind` "task_error", `error_type` the
    exception's class), crashed its worker on every attempt ("crashed"), or ran past the
    timeout ("timeout")."""

    def __init__(self, kind, message, attempts=None, worker=None, error_type=None, item=None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.attempts = attempts
        self.worker = worker
        self.error_type = error_type
        self.item = item

    def __reduce__(self):
        return (
            JobFailed,
            (self.kind, self.message, self.attempts, self.worker, self.error_type, self.item),
        )


def _function_name(fn):
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(
            f"corral.Pool runs module-level functions, found by module and name; {fn!r} is not "
            "one (a lambda or a nested function): define it at the top of a module"
        )
    if module == "__main__":
        main = sys.modules["__main__"]
        if not getattr(main, "__file__", None):
            raise ValueError(
                f"{fn!r} is defined in an interactive __main__, which workers cannot import: "
                "define it in a module or a script"
            )
    return f"{module}:{qualname}"


# One encoder for every job line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _encode_job(index, name, args):
    """The job line of one call; `name` is the function's name as JSON."""
    args = list(args)
    if len(args) == 1 and type(args[0]) is int:
        body = f'{{"f":{name},"a":[{args[0]}]}}'
    elif plain(args):
        body = f'{{"f":{name},"a":{_encode(args)}}}'
    else:
        body = f'{{"f":{name},"p":"{pack(tuple(args))}"}}'
    return f'{{"id":{index},"task":"call","input":{body}}}\n'.encode()


def _encode_chunk(index, name, chunk, star):
    """The job line of a chunk of items, pickled: "pa" a list of single arguments, "pc" (for
    starmap) a list of argument tuples."""
    if star:
        body = f'{{"f":{name},"pc":"{pack([tuple(item) for item in chunk])}"}}'
    else:
        body = f'{{"f":{name},"pa":"{pack(chunk)}"}}'
    return f'{{"id":{index},"task":"call","input":{body}}}\n'.encode()


def _decode_output(output):
    if "p" in output:
        return unpack(output["p"])
    return output["j"]


JobFailed.__module__ = "corral"


class Pool:
    """A pool of `processes` Python worker processes (default: the CPUs available).

    timeout: a job running longer than this ("30s", "500ms", or seconds as a number) has its
    worker killed and is retried, then fails as "timeout". retries: extra attempts for a job that
    crashed or timed out (a function that raises is not retried). initializer(*initargs) runs
    once in each worker before any job. max_tasks_per_child replaces a worker after that many
    jobs. progress: a callable given (done, failed) after each result, or True for a tqdm bar
    when tqdm is installed.
    """

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        timeout=None,
        retries=2,
        max_tasks_per_child=None,
        progress=None,
    ):
        self._processes = processes
        self._init = None
        if initializer is not None:
            self._init = json.dumps([_function_name(initializer), pack(tuple(initargs))])
        if isinstance(timeout, (int, float)):
            timeout = f"{timeout * 1000:.0f}ms"
        self._timeout = timeout
        self._retries = retries
        self._max_tasks = max_tasks_per_child
        self._progress = progress
        self._runs = []
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()
        return False

    def close(self):
        """No more map calls."""
        self._closed = True

    def terminate(self):
        """Stops every run of this pool at once: corral and its workers are killed."""
        self._closed = True
        for run in self._runs:
            run.stop()
        self._runs.clear()

    def join(self):
        """Waits for the runs of this pool to end (after close())."""
        for run in self._runs:
            run.wait()

    def imap(self, fn, iterable, chunksize=1, *, with_input=False, return_exceptions=False):
        """Results in input order, computed ahead within a bounded window.

        chunksize: items sent to a worker as one job. 1 (the default) supervises each item on
        its own; larger chunks cost less per item for tiny tasks, but a crash or timeout then
        fails (after its retries) every item of its chunk, as it does in multiprocessing. An
        exception raised by the function is always the item's own."""
        return self._start(fn, iterable, chunksize, True, False, with_input, return_exceptions)

    def imap_unordered(
        self, fn, iterable, chunksize=1, *, with_input=False, return_exceptions=False
    ):
        """Results as they complete (see imap for chunksize)."""
        return self._start(fn, iterable, chunksize, False, False, with_input, return_exceptions)

    def map(self, fn, iterable, chunksize=1, *, return_exceptions=False):
        """A list of results in input order; raises the first failure unless
        return_exceptions."""
        return list(self.imap(fn, iterable, chunksize, return_exceptions=return_exceptions))

    def starmap(self, fn, iterable, chunksize=1, *, return_exceptions=False):
        """map() with each item unpacked into arguments."""
        return list(self.istarmap(fn, iterable, chunksize, return_exceptions=return_exceptions))

    def istarmap(self, fn, iterable, chunksize=1, *, return_exceptions=False):
        """imap() with each item unpacked into arguments."""
        return self._start(fn, iterable, chunksize, True, True, False, return_exceptions)

    def _start(self, fn, iterable, chunksize, ordered, star, with_input, return_exceptions):
        if self._closed:
            raise ValueError("Pool not running")
        chunksize = max(1, int(chunksize or 1))
        name = _function_name(fn)
        run = _Run(self, name, iterable, chunksize, ordered, star, with_input, return_exceptions)
        self._runs.append(run)
        return run

    def _command(self, ordered):
        cmd = [corral_binary(), "run", "-q", "--exit-with-parent"]
        cmd += ["--worker-cmd", f"{shlex.quote(sys.executable)} -m corral._pool_worker"]
        if self._processes:
            cmd += ["-j", str(self._processes)]
        if self._timeout:
            cmd += ["--timeout", str(self._timeout)]
        cmd += ["--retries", str(self._retries)]
        if self._max_tasks:
            cmd += ["--max-jobs-per-worker", str(self._max_tasks)]
        if ordered:
            cmd.append("--keep-order")
        return cmd

    def _environment(self):
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The workers import what this process can: this package, and the user's modules.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [here, *sys.path, env.get("PYTHONPATH", "")] if p
        )
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        if main_file and getattr(main, "__spec__", None) is None:
            env["CORRAL_POOL_MAIN"] = os.path.abspath(main_file)
        else:
            env.pop("CORRAL_POOL_MAIN", None)
        if self._init:
            env["CORRAL_POOL_INIT"] = self._init
        return env


_END = object()


class _Run:
    """One map call: a corral process fed by a thread, read as an iterator.

    Each result line (one item, or a chunk) becomes a list of values handed out by a plain list
    iterator; only a line with a failure in it, or a pool with a progress callback, goes through
    the slower path that counts, reports and raises item by item."""

    def __init__(
        self, pool, name, iterable, chunksize, ordered, star, with_input, return_exceptions
    ):
        self._return_exceptions = return_exceptions
        self._chunksize = chunksize
        self._with_input = with_input
        self._inputs = {} if with_input else None
        self._lock = threading.Lock()
        self._done = 0
        self._failed = 0
        try:
            total = len(iterable)
        except TypeError:
            total = None
        self._progress, self._progress_end = _progress_callback(pool._progress, total)
        # What the current line hands out; `_flags` is None on the fast path, else per value
        # whether it is a failure.
        self._current = iter(())
        self._flags = None
        self._proc = subprocess.Popen(
            pool._command(ordered),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=pool._environment(),
            # Its own session: a Ctrl-C reaches this process only, and the pool decides.
            start_new_session=True,
        )
        self._feed_error = None
        # The size of each chunk that is not full, by index.
        self._sizes = {}
        self._total = total
        self._workers = pool._processes or len(os.sched_getaffinity(0))
        self._feeder = threading.Thread(
            target=self._feed, args=(name, iterable, star), name="corral-feed", daemon=True
        )
        self._feeder.start()

    def _feed(self, name, iterable, star):
        stdin = self._proc.stdin
        name = _encode(name)
        try:
            if self._chunksize == 1:
                for index, item in enumerate(iterable):
                    args = tuple(item) if star else (item,)
                    if self._inputs is not None:
                        with self._lock:
                            self._inputs[index] = item
                    stdin.write(_encode_job(index, name, args))
            else:
                items = iter(iterable)
                for index, size in enumerate(self._chunk_sizes()):
                    chunk = list(itertools.islice(items, size))
                    if not chunk:
                        break
                    if len(chunk) < self._chunksize:
                        with self._lock:
                            self._sizes[index] = len(chunk)
                    if self._inputs is not None:
                        with self._lock:
                            self._inputs[index] = chunk
                    stdin.write(_encode_chunk(index, name, chunk, star))
        except BrokenPipeError:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            self._feed_error = exc
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    def _chunk_sizes(self):
        """The size of each chunk: `chunksize`, but when the number of items is known, the last
        few chunks' worth goes in quarter chunks, so that the workers run out of work together
        instead of one finishing a whole chunk while the others wait."""
        size = self._chunksize
        if self._total is None:
            return itertools.repeat(size)
        tail = min(self._total, 2 * self._workers * size)
        small = max(1, size // 4)
        head = (self._total - tail) // size
        rest = self._total - head * size
        return itertools.chain(
            itertools.repeat(size, head),
            itertools.repeat(small, -(-rest // small)),
            # Should the iterable hold more than its len() said.
            itertools.repeat(size),
        )

    def __iter__(self):
        return self

    def __next__(self):
        value = next(self._current, _END)
        if value is _END:
            return self._next_line()
        if self._flags is None:
            return value
        return self._deliver(value, next(self._flags))

    def _next_line(self):
        """Reads result lines until one has something to hand out, and hands out its first."""
        while True:
            line = self._proc.stdout.readline()
            if not line:
                self._current = iter(())
                self._flags = None
                self._finish()
                raise StopIteration
            items, outcomes, failed = self._take(json.loads(line))
            if not outcomes:
                continue
            values = zip(items, outcomes) if self._with_input else outcomes
            if failed or self._progress is not None:
                self._current = iter(values)
                self._flags = iter([position in failed for position in range(len(outcomes))])
            else:
                self._done += len(outcomes)
                self._current = iter(values)
                self._flags = None
            return next(self)

    def _deliver(self, value, failure):
        if failure:
            self._failed += 1
        else:
            self._done += 1
        if self._progress is not None:
            self._progress(self._done, self._failed)
        if failure and not self._return_exceptions:
            raise value[1] if self._with_input else value
        return value

    def _take(self, record):
        """The items, outcomes and failed positions of one result line (one item, or a chunk)."""
        index = record.get("id")
        items = None
        if self._inputs is not None and index is not None:
            with self._lock:
                items = self._inputs.pop(index, None)
            if self._chunksize == 1:
                items = [items]
        attempts, worker = record.get("attempts"), record.get("worker")
        if record.get("ok"):
            output = record["output"]
            if self._chunksize == 1:
                return items, [_decode_output(output)], ()
            outcomes = unpack(output["pr"])
            failed = unpack(output["pe"]) if "pe" in output else {}
            for position, (error_type, message) in failed.items():
                item = items[position] if items is not None else None
                outcomes[position] = JobFailed(
                    "task_error", message, attempts, worker, error_type, item
                )
            return items, outcomes, failed
        # The whole job failed: every item of it, each with the job's error.
        if items is not None:
            size = len(items)
        elif self._chunksize == 1:
            size = 1
        else:
            with self._lock:
                size = self._sizes.get(index, self._chunksize)
        error = record.get("error", {})
        outcomes = [
            JobFailed(
                error.get("kind", "unknown"),
                error.get("message", ""),
                attempts,
                worker,
                error.get("type"),
                items[position] if items is not None else None,
            )
            for position in range(size)
        ]
        return items, outcomes, range(size)

    def _finish(self):
        if self._progress_end is not None:
            self._progress_end()
        self._feeder.join()
        status = self._proc.wait()
        if self._feed_error is not None:
            raise self._feed_error
        # 0: every job ok; 1: some failed (each was reported as it came).
        if status not in (0, 1):
            raise RuntimeError(f"corral ended with status {status}")

    def stop(self):
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stdin):
            try:
                stream.close()
            except OSError:
                pass

    def wait(self):
        self._proc.wait()


Pool.__module__ = "corral"


def _progress_callback(progress, total):
    """The function told of each result, the user's own or a tqdm bar's (progress=True), and
    the one called at the end of the run (or None)."""
    if progress is None or progress is False:
        return None, None
    if callable(progress):
        return progress, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=total, unit="job")

    def update(done, failed):
        bar.update(done + failed - bar.n)
        if failed:
            bar.set_postfix(failed=failed, refresh=False)

    return update, bar.close
