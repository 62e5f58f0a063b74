"""The calls of a pool on its supervisor: how each one's jobs are written and where its
results go.

An ItemCall runs a function over an iterable (map, imap, starmap and their kin, the executor's
map), a chunk of items per job, and hands each item's outcome to a collector: in order, as they
come, or into a list. A StreamCall carries single calls made one at a time (apply_async, the
executor's submit) as one long call, each job with a target told its outcome. The feeder thread
asks a call for lines; the reader thread gives it results; everything shared is under the
supervisor's lock.
"""

import base64
import itertools
import json
import pickle
import sys
import threading
import types
from collections import deque

from corral import _spawn
from corral._codec import SPILL_BYTES, exception, plain, remove_spilled, spill, unspill
from corral._errors import job_failed
from corral._supervisor import CALL_WINDOW, TOTAL_WINDOW

_HIGHEST = pickle.HIGHEST_PROTOCOL
# One encoder for every job line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# The names of the functions met lately (a loop of maps names the same one each time). Only
# functions found by name: a pickled callable (a bound method) is pickled again each call, as
# its state may have changed.
_names = {}
_NAMES = 1024


def function_ref(fn):
    """The input field that names fn for the workers: by module and name, as spawn finds
    functions, or pickled (a partial, a bound method, a callable object)."""
    ref = _names.get(fn) if type(fn) in _NAMED else None
    if ref is None:
        ref = _function_ref(fn)
        if ref.startswith('"f":'):
            if len(_names) >= _NAMES:
                _names.clear()
            _names[fn] = ref
    return ref


_NAMED = (types.FunctionType, types.BuiltinFunctionType)

# What one item of a function took lately, in milliseconds (the "ms" of its chunks' results,
# corral's own measure, divided among their items), by the reference of a function found by
# name (a pickled callable's reference may be large, and its state may change).
_costs = {}
# The work per worker, in milliseconds, under which a map with no chunksize goes in one chunk
# per worker: smaller chunks could balance no more than this, and each job more costs tens of
# microseconds in its passage through corral and the worker.
ONE_CHUNK_MS = 2.0


def default_chunksize(fn, items, workers):
    """(chunksize, split_tail) for a map of `items` with no chunksize given. A function whose
    items were measured cheap in an earlier call (as joblib's automatic batching measures its
    batches) goes in one chunk per worker; otherwise multiprocessing's own rule, about four
    chunks per worker, with the last ones split (see _chunk_sizes)."""
    cost = _costs.get(function_ref(fn))
    if cost is not None and cost * items <= ONE_CHUNK_MS * workers:
        return -(-items // workers), False
    chunksize, extra = divmod(items, workers * 4)
    return chunksize + (1 if extra else 0), True


def _function_ref(fn):
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if module == "__main__" and not _spawn.main_is_importable():
        raise ValueError(
            f"{fn!r} is defined in a __main__ that workers cannot run again (an interactive "
            "session, `python -c` or a script on stdin): define it in a module, or in a script "
            "file"
        )
    if (
        isinstance(fn, (types.FunctionType, types.BuiltinFunctionType))
        and module
        and qualname
        and "<" not in qualname
        and _resolves(module, qualname, fn)
    ):
        return '"f":' + _encode(f"{module}:{qualname}")
    try:
        data = pickle.dumps(fn, protocol=_HIGHEST)
    except Exception as exc:
        note = (
            "corral's workers find a function by module and name, as multiprocessing's spawn "
            "start method does: define it at the top level of a module"
        )
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        raise
    return '"fp":"' + base64.b64encode(data).decode() + '"'


def _resolves(module, qualname, fn):
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def _pickled(kind, value, job, spilled):
    """The input field of pickled arguments: inline, or the name of the file they go through
    (`spilled` is the call's: the file's name is added to it)."""
    data = pickle.dumps(value, protocol=_HIGHEST)
    if len(data) > SPILL_BYTES:
        name = spill(spilled.directory, f"in-{job}", data)
        spilled.add(job)
        return f'"s":"{name}","k":"{kind}"'
    return f'"{kind}":"{base64.b64encode(data).decode()}"'


def _line(job, fref, body):
    return f'{{"id":{job},"task":"call","input":{{{fref},{body}}}}}\n'.encode()


def single_line(job, fref, args, kwargs, spilled):
    """The job line of one call of the function."""
    if not kwargs:
        if len(args) == 1 and type(args[0]) is int:
            return _line(job, fref, f'"a":[{args[0]}]')
        if plain(args):
            body = '"a":' + _encode(args)
            if len(body) <= SPILL_BYTES:
                try:
                    return _line(job, fref, body)
                except UnicodeEncodeError:
                    # Text with lone surrogates is not UTF-8: it travels pickled.
                    pass
        return _line(job, fref, _pickled("p", args, job, spilled))
    return _line(job, fref, _pickled("pk", (args, kwargs), job, spilled))


def chunk_line(job, fref, chunk, star, spilled):
    """The job line of a chunk of items: "pa" a list of single arguments, "pc" a list of
    argument tuples (for starmap)."""
    return _line(job, fref, _pickled("pc" if star else "pa", chunk, job, spilled))


class Spilled(set):
    """The jobs of a call whose arguments went through a file, removed once answered."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def answered(self, jobs):
        for job in jobs:
            if job in self:
                self.discard(job)
                remove_spilled(self.directory, f"in-{job}")


def outcomes(record, size, directory, executor=False):
    """The outcomes of the items of one result line: (values, failed), the values in order
    and `failed` None when all succeeded, else the set of the positions whose value is the
    exception they failed with (an executor's call has concurrent.futures' kind of remote
    traceback). A chunk of results stays one list: a map of tiny tasks hands it out whole."""
    if record.get("ok"):
        output = record["output"]
        if "j" in output:
            return [output["j"]], None
        try:
            if "b" in output:
                raw = pickle.loads(base64.b64decode(output["b"]))
            else:
                raw = pickle.loads(unspill(directory, output["s"]))
        except BaseException as exc:  # noqa: BLE001 - whatever unpickling does, even SystemExit
            return _unreadable("its result could not be unpickled here", exc, record, size)
        kind = raw[0]
        if kind == "v":
            return [raw[1]], None
        if kind == "x":
            return [exception(raw[1], executor)], ALL_OF_ONE
        if kind == "u":
            cause = exception(raw[1], executor)
            what = "its arguments could not be unpickled in the worker"
            return _unreadable(what, cause, record, size)
        results, errors = raw[1], raw[2]
        if not errors:
            return results, None
        for position, failure in errors.items():
            results[position] = exception(failure, executor)
        return results, set(errors)
    error = record.get("error") or {}
    attempts, worker = record.get("attempts"), record.get("worker")
    kind, message = error.get("kind", "unknown"), error.get("message", "")
    failures = [job_failed(kind, message, attempts, worker) for _ in range(size)]
    return failures, set(range(size))


# The `failed` of a single failed item.
ALL_OF_ONE = frozenset([0])


def _unreadable(what, cause, record, size):
    """Every item of a result line fails with JobUnreadable, caused by the unpickling error."""
    from corral._errors import JobUnreadable

    unreadable = JobUnreadable(
        "unreadable", f"{what}: {cause!r}", record.get("attempts"), record.get("worker")
    )
    unreadable.__cause__ = cause
    return [unreadable] * size, set(range(size))


class Call:
    """What every call shares: counts of jobs sent and answered, and the end."""

    window = CALL_WINDOW
    number = None
    # Whether a broken pool fails it as an executor's call (BrokenProcessPool) or a pool's.
    executor = False

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.directory = supervisor.directory
        # Only a call whose caller waits on it for outcomes has one (see StreamedItems).
        self.cond = None
        self.sent = 0
        self.answered = 0
        self.exhausted = False
        self.cancelled = False
        # Once the supervisor can run nothing more: makes the exception to raise.
        self.broken = None
        self.spilled = Spilled(self.directory)

    def has_work(self, closing):
        return not self.exhausted

    def room(self):
        """Jobs the call may send now; the lock is held."""
        return self.window - (self.sent - self.answered)

    def check_finished(self):
        """Forgets the call once every job is sent and answered; the lock is held."""
        if self.exhausted and self.answered == self.sent:
            self.supervisor.finished(self)
            self.wake_waiters()

    def wake_waiters(self):
        """Wakes whoever waits for this call's outcomes; the lock is held."""
        if self.cond is not None:
            self.cond.notify_all()

    def take(self, results):
        """The reader's results of this call: [(job index, result record)]."""
        if self.spilled:
            base = self.number << 32
            self.spilled.answered([base + job for job, _ in results])
        delivered = self.deliver(results)
        with self.supervisor.lock:
            self.answered += len(results)
            if not self.cancelled:
                self.supervisor.in_flight -= len(results)
            self.supervisor.room_made()
            self.check_finished()
        if delivered is not None:
            delivered()

    def break_(self, make_exception):
        """The supervisor can run nothing more."""
        with self.supervisor.lock:
            self.broken = make_exception
            self.exhausted = True
            self.wake_waiters()


class ItemCall(Call):
    """A function over an iterable, a chunk of items per job; subclasses collect."""

    def __init__(
        self, supervisor, fn, iterable, chunksize, star, with_input=False, total=None, split=True
    ):
        super().__init__(supervisor)
        self.fref = function_ref(fn)
        self.items = iter(iterable)
        self.chunksize = chunksize
        self.star = star
        self.inputs = {} if with_input else None
        # Items taken from the iterable; all of them, once it is used up.
        self.taken = 0
        self.total = None
        self.jobs = 0
        # The first item and size of each chunk sent and not answered.
        self.chunks = {}
        if split:
            self.sizes = _chunk_sizes(chunksize, total, supervisor.processes)
        else:
            self.sizes = itertools.repeat(chunksize)

    def lines(self, room):
        out = []
        base = self.number << 32
        spilled = self.spilled
        fref = self.fref
        items = self.items
        star = self.star
        inputs = self.inputs
        try:
            if self.chunksize == 1:
                for item in itertools.islice(items, room):
                    args = tuple(item) if star else (item,)
                    if inputs is not None:
                        inputs[self.taken] = item
                    out.append(single_line(base + self.jobs, fref, args, None, spilled))
                    self.jobs += 1
                    self.taken += 1
                if len(out) < room:
                    return out, self._used_up()
                return out, False
            for _ in range(room):
                chunk = list(itertools.islice(items, next(self.sizes)))
                if not chunk:
                    return out, self._used_up()
                if star:
                    chunk = [tuple(args) for args in chunk]
                if inputs is not None:
                    for offset, item in enumerate(chunk):
                        inputs[self.taken + offset] = item
                self.chunks[self.jobs] = (self.taken, len(chunk))
                out.append(chunk_line(base + self.jobs, fref, chunk, star, spilled))
                self.jobs += 1
                self.taken += len(chunk)
            return out, False
        except Exception as exc:  # noqa: BLE001 - the iterable, or an argument that will not go
            # As multiprocessing does: the item where it failed fails with the exception, and
            # the call ends there.
            finish = self.stopped_at(self.taken, exc)
            if finish is not None:
                finish()
            return out, True

    def stopped_at(self, position, exc):
        """The call ends at item `position`, which fails with exc."""
        self.total = position + 1
        return self.collect([(position, [exc], ALL_OF_ONE)])

    def _used_up(self):
        with self.supervisor.lock:
            self.total = self.taken
            self.wake_waiters()
        return True

    def deliver(self, results):
        directory = self.directory
        executor = self.executor
        chunks = []
        spent = counted = 0
        for job, record in results:
            if self.chunksize == 1:
                first, size = job, 1
            else:
                first, size = self.chunks.pop(job)
            ms = record.get("ms")
            if ms is not None:
                spent += ms
                counted += size
            values, failed = outcomes(record, size, directory, executor)
            if self.inputs is not None:
                inputs = self.inputs
                values = [(inputs.pop(first + i, None), v) for i, v in enumerate(values)]
            chunks.append((first, values, failed))
        if counted and self.fref.startswith('"f":'):
            if len(_costs) >= _NAMES:
                _costs.clear()
            _costs[self.fref] = spent / counted
        return self.collect(chunks)

    def collect(self, chunks):
        """Takes [(first item's index, values, failed)] (see outcomes); may return a function
        to call once the lock is released (callbacks)."""
        raise NotImplementedError


def _chunk_sizes(size, total, workers):
    """The size of each chunk: `chunksize`, but when the number of items is known, the last
    few chunks' worth goes in quarter chunks, so that the workers run out of work together
    instead of one finishing a whole chunk while the others wait."""
    if total is None or size < 4:
        return itertools.repeat(size)
    tail = min(total, 2 * workers * size)
    small = max(1, size // 4)
    head = (total - tail) // size
    rest = total - head * size
    return itertools.chain(
        itertools.repeat(size, head),
        itertools.repeat(small, -(-rest // small)),
        # Should the iterable hold more than its len() said.
        itertools.repeat(size),
    )


class _Progress:
    """Counts each item's outcome for a progress callback (the reader thread calls it)."""

    def __init__(self, progress):
        self.progress = progress
        self.done = 0
        self.failed = 0

    def report(self, chunks):
        progress = self.progress
        for _, values, failed in chunks:
            for position in range(len(values)):
                if failed is not None and position in failed:
                    self.failed += 1
                else:
                    self.done += 1
                progress(self.done, self.failed)


class StreamedItems(ItemCall):
    """imap and imap_unordered: outcomes handed out one at a time, in order or as they come."""

    def __init__(
        self,
        supervisor,
        fn,
        iterable,
        chunksize,
        star,
        ordered,
        progress=None,
        progress_end=None,
        **kw,
    ):
        super().__init__(supervisor, fn, iterable, chunksize, star, **kw)
        self.cond = threading.Condition(supervisor.lock)
        # Called once when the iteration ends or is closed (a tqdm bar's close).
        self.progress_end = progress_end
        self.ordered = ordered
        self.buffer = {} if ordered else deque()
        self.position = 0
        # Items taken from the iterable and not yet handed out, at most: what is sent, and
        # what waits to be read, so that a slow reader holds back the sending.
        self.window_items = max(CALL_WINDOW, 4 * supervisor.processes * chunksize)
        self.progress = None if progress is None else _Progress(progress)
        # An asyncio waiter: (loop, event) to set when an outcome comes.
        self.waker = None

    def collect(self, chunks):
        with self.supervisor.lock:
            if self.ordered:
                for first, values, failed in chunks:
                    self.buffer[first] = (values, failed)
            else:
                self.buffer.extend((values, failed) for _, values, failed in chunks)
            self.wake_waiters()
        if self.progress is not None:
            self.progress.report(chunks)

    def ended(self):
        """The iteration is over (read to its end, or closed): the progress bar, if any, is
        closed, once."""
        end, self.progress_end = self.progress_end, None
        if end is not None:
            end()

    def wake_waiters(self):
        self.cond.notify_all()
        if self.waker is not None:
            loop, event = self.waker
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                # The loop is closed: nobody awaits any more.
                pass

    def room(self):
        return (self.window_items - (self.taken - self.position)) // self.chunksize

    def poll(self):
        """The next outcomes, (values, failed) as outcomes() gives them; None if none is
        ready; StopIteration at the end. The lock is held."""
        if self.ordered:
            chunk = self.buffer.pop(self.position, None)
        else:
            chunk = self.buffer.popleft() if self.buffer else None
        if chunk is not None:
            self.position += len(chunk[0])
            self.supervisor.room_made()
            return chunk
        if self.total is not None and self.position >= self.total:
            raise StopIteration
        if self.broken is not None:
            # Everything not answered ends here, with the reason.
            self.total = self.position
            return [self.broken(executor=self.executor)], ALL_OF_ONE
        return None

    def next(self, timeout=None):
        """The next outcomes, (values, failed), waiting for them; StopIteration at the end,
        corral.TimeoutError if `timeout` passes first."""
        from corral._errors import TimeoutError

        with self.supervisor.lock:
            chunk = self.poll()
            if chunk is None:
                deadline = None if timeout is None else _now() + timeout
                while chunk is None:
                    if deadline is None:
                        self.cond.wait()
                    else:
                        left = deadline - _now()
                        if left <= 0:
                            raise TimeoutError
                        self.cond.wait(left)
                    chunk = self.poll()
        return chunk


class ListedItems(ItemCall):
    """map_async and its kin: every outcome into a list; `done(values, failure)` is called
    once all are in, from the thread that made it so, with the first failure by position (or
    None); values is None when the pool broke first."""

    def __init__(self, supervisor, fn, items, chunksize, star, done, progress=None, **kw):
        super().__init__(supervisor, fn, items, chunksize, star, total=len(items), **kw)
        self.values = [None] * len(items)
        self.left = len(items)
        self.first_failure = None
        self.done = done
        self.progress = None if progress is None else _Progress(progress)
        if not items:
            self.exhausted = True

    def collect(self, chunks):
        with self.supervisor.lock:
            for first, values, failed in chunks:
                self.values[first : first + len(values)] = values
                if failed:
                    index = first + min(failed)
                    if self.first_failure is None or index < self.first_failure:
                        self.first_failure = index
                self.left -= len(values)
            finished = self.left == 0
        if self.progress is not None:
            self.progress.report(chunks)
        return self._finish if finished else None

    def stopped_at(self, position, exc):
        # The items from there on are never sent: they count as answered, the list ends with
        # the failure.
        self.total = position
        with self.supervisor.lock:
            self.left -= len(self.values) - position - 1
        return self.collect([(position, [exc], ALL_OF_ONE)])

    def _finish(self):
        failure = None if self.first_failure is None else self.values[self.first_failure]
        self.done(self.values, failure)

    def break_(self, make_exception):
        super().break_(make_exception)
        self.done(None, make_exception())


class StreamCall(Call):
    """Single calls made one at a time (apply_async, the executor's submit), carried as one
    call that ends when the pool closes. Each job has a target with `start()` (False if it was
    cancelled before it was sent) and `finish(ok, value)`."""

    def __init__(self, supervisor, window=CALL_WINDOW):
        super().__init__(supervisor)
        self.window = window
        self.pending = deque()
        self.targets = {}
        self.jobs = 0

    def add(self, target, fn, args, kwargs):
        """Queues one call (from any thread); fn is checked now. While the call has room and
        nothing waits before it, the calling thread sends the job itself."""
        fref = function_ref(fn)
        supervisor = self.supervisor
        with supervisor.lock:
            broken = self.broken
            now = (
                broken is None
                and not self.pending
                and self.sent - self.answered < self.window
                and supervisor.in_flight < TOTAL_WINDOW
            )
            if now:
                job = self.jobs
                self.jobs += 1
                self.sent += 1
                supervisor.in_flight += 1
                self.targets[job] = target
            elif broken is None:
                self.pending.append((target, fref, args, kwargs))
                supervisor.wake()
        if broken is not None:
            target.finish(False, broken(executor=self.executor))
            return
        if not now:
            return
        target.start()
        try:
            line = single_line((self.number << 32) + job, fref, args, kwargs, self.spilled)
        except Exception as exc:  # noqa: BLE001 - an argument that cannot be pickled
            with supervisor.lock:
                self.targets.pop(job, None)
                self.answered += 1
                supervisor.in_flight -= 1
            target.finish(False, exc)
            return
        supervisor.send(self, [line], False)

    def has_work(self, closing):
        return bool(self.pending) or (closing and not self.exhausted)

    def lines(self, room):
        out = []
        base = self.number << 32
        lock = self.supervisor.lock
        failed = []
        ended = False
        while len(out) < room:
            with lock:
                if not self.pending:
                    ended = self.supervisor.closing
                    break
                target, fref, args, kwargs = self.pending.popleft()
                if not target.start():
                    continue
                job = self.jobs
                self.jobs += 1
                self.targets[job] = target
            try:
                line = single_line(base + job, fref, args, kwargs, self.spilled)
            except Exception as exc:  # noqa: BLE001 - an argument that cannot be pickled
                # Sent and answered at once, as far as the counts go.
                with lock:
                    self.targets.pop(job, None)
                    self.sent += 1
                    self.answered += 1
                failed.append((target, exc))
                continue
            out.append(line)
        for target, exc in failed:
            target.finish(False, exc)
        return out, ended

    def deliver(self, results):
        directory = self.directory
        done = [
            (self.targets.pop(job), outcomes(record, 1, directory, self.executor))
            for job, record in results
        ]

        def finish():
            for target, (values, failed) in done:
                target.finish(failed is None, values[0])

        return finish

    def cancel_pending(self):
        """Cancels the targets not sent yet (the executor's shutdown(cancel_futures=True))."""
        with self.supervisor.lock:
            pending = list(self.pending)
            self.pending.clear()
        for target, *_ in pending:
            target.cancel()

    def break_(self, make_exception):
        super().break_(make_exception)
        with self.supervisor.lock:
            sent = list(self.targets.values())
            pending = [p[0] for p in self.pending]
            self.targets.clear()
            self.pending.clear()
        for target in sent:
            target.finish(False, make_exception(executor=self.executor))
        for target in pending:
            if target.start():
                target.finish(False, make_exception(executor=self.executor))


def _now():
    import time

    return time.monotonic()
