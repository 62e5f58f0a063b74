"""corral.Pool: multiprocessing.Pool's API and semantics, on one corral supervisor for the
pool's whole life (see _supervisor), with corral's supervision: a worker that crashes or hangs
is replaced and its job retried, and a job that fails on every attempt fails alone.

Results come back as they went; a task's exception comes back as itself, with the worker's
traceback as its __cause__. The asyncio methods (amap, astarmap, aapply, aimap,
aimap_unordered) wait without a thread of their own, and cancelling the task that awaits one
drops the jobs of that call not yet run.
"""

import functools
import os
import threading
import warnings
import weakref

from corral._calls import (
    ListedItems,
    StreamCall,
    StreamedItems,
    default_chunksize,
    function_ref,
)
from corral._errors import TimeoutError
from corral._supervisor import Supervisor

RUN = "RUN"
# Items of a map that the calling thread sends itself, at most.
SEND_NOW = 64
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"


def cpu_count():
    """The number of CPUs this process may use (its affinity), as os.process_cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def timeout_option(timeout):
    """corral's --timeout from seconds (a number) or a duration ("30s", "500ms")."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, str)):
        raise TypeError(f"timeout must be seconds or a duration such as '30s', not {timeout!r}")
    if isinstance(timeout, str):
        return timeout
    if not timeout > 0:
        raise ValueError(f"timeout must be more than 0 seconds, not {timeout!r}")
    return f"{max(1, round(timeout * 1000))}ms"


def retries_option(retries):
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {retries!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    return retries


class ApplyResult:
    """The result of apply_async and map_async, as multiprocessing's AsyncResult."""

    def __init__(self, callback=None, error_callback=None):
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None

    def ready(self):
        return self._event.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        self._event.wait(timeout)

    def get(self, timeout=None):
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    # What a StreamCall asks of the targets of its jobs.
    def start(self):
        return True

    def finish(self, ok, value):
        self._success = ok
        self._value = value
        try:
            if ok and self._callback is not None:
                self._callback(value)
            elif not ok and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of map_async and starmap_async: the list of results."""


_END = object()


class IMapIterator:
    """Results of imap in order (next(timeout) raises corral.TimeoutError, as
    multiprocessing's does). Dropping it, or close(), drops the jobs not run yet.

    Results come a chunk at a time, and a chunk with no failure in it is handed out by a plain
    list iterator: a map of tiny tasks costs no lock per item."""

    def __init__(self, call, return_exceptions):
        self._call = call
        self._return_exceptions = return_exceptions
        self._with_input = call.inputs is not None
        self._values = iter(())
        # The positions in the current chunk that failed (None: none did), and where it is.
        self._failed = None
        self._at = 0
        self._cancel = weakref.finalize(self, call.supervisor.cancel, call)

    def __iter__(self):
        return self

    def next(self, timeout=None):
        value = next(self._values, _END)
        if value is _END:
            try:
                self._start(*self._call.next(timeout))
            except StopIteration:
                self._call.ended()
                raise
            value = next(self._values)
        if self._failed is None:
            return value
        return self._checked(value)

    __next__ = next

    def _start(self, values, failed):
        self._values = iter(values)
        self._failed = failed
        self._at = 0

    def _checked(self, value):
        at = self._at
        self._at += 1
        if at not in self._failed or self._return_exceptions:
            return value
        raise value[1] if self._with_input else value

    def close(self):
        """Drops the jobs of this call not run yet; the results not read are discarded."""
        self._cancel()
        self._call.ended()

    # As an async iterator: awaited without a thread of its own.
    def __aiter__(self):
        return self

    async def __anext__(self):
        value = next(self._values, _END)
        if value is _END:
            await self._arrived()
            value = next(self._values)
        if self._failed is None:
            return value
        return self._checked(value)

    async def _arrived(self):
        """Waits for the next chunk of outcomes without blocking the event loop."""
        import asyncio

        call = self._call
        event = None
        while True:
            with call.supervisor.lock:
                try:
                    chunk = call.poll()
                except StopIteration:
                    chunk = _END
                if chunk is None:
                    if event is None:
                        event = asyncio.Event()
                        call.waker = (asyncio.get_running_loop(), event)
                    event.clear()
            if chunk is _END:
                call.ended()
                raise StopAsyncIteration
            if chunk is not None:
                self._start(*chunk)
                return
            try:
                await event.wait()
            except asyncio.CancelledError:
                self.close()
                raise

    async def aclose(self):
        self.close()


class IMapUnorderedIterator(IMapIterator):
    """Results of imap_unordered, as they complete."""


class Pool:
    """A pool of worker processes, as multiprocessing.Pool, on one corral supervisor.

    Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None)
    as in multiprocessing (context is accepted and not needed: corral always starts workers as
    fresh processes, as the spawn start method does). corral's own options are keyword-only:
    timeout, a job running longer than this ("30s", "500ms", or seconds as a number) has its
    worker killed and is retried, then fails as JobTimedOut; retries, extra attempts for a job
    that crashed or timed out (an exception raised by the function is not retried);
    max_tasks_per_child, another name for maxtasksperchild; progress, a callable given (done,
    failed) after each result, or True for a tqdm bar when tqdm is installed.
    """

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        context=None,
        *,
        timeout=None,
        retries=2,
        max_tasks_per_child=None,
        progress=None,
    ):
        self._state = RUN
        self._supervisor = None
        if processes is None:
            processes = cpu_count()
        if isinstance(processes, bool) or not isinstance(processes, int):
            raise TypeError(f"processes must be an int, not {processes!r}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if maxtasksperchild is not None and maxtasksperchild != max_tasks_per_child:
                raise TypeError("give maxtasksperchild or max_tasks_per_child, not both")
            maxtasksperchild = max_tasks_per_child
        if maxtasksperchild is not None and (
            isinstance(maxtasksperchild, bool)
            or not isinstance(maxtasksperchild, int)
            or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._processes = processes
        self._progress = progress
        self._singles = None
        self._singles_lock = threading.Lock()
        self._supervisor = Supervisor(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            timeout_option(timeout),
            retries_option(retries),
        )

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} pool_size={self._processes}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if getattr(self, "_state", None) == RUN and self._supervisor is not None:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            self._supervisor.abandon()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def close(self):
        """No more calls: the workers exit once every call made is answered."""
        if self._state == RUN:
            self._state = CLOSE
            self._supervisor.close()

    def terminate(self):
        """Stops the workers at once; results not ready by then never come."""
        self._state = TERMINATE
        self._supervisor.terminate()

    def join(self):
        """Waits for the workers to exit, after close() or terminate()."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._supervisor.join()

    # Single calls.

    def apply(self, func, args=(), kwds={}):  # noqa: B006 - multiprocessing's signature
        """func(*args, **kwds) in a worker; waits for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):  # noqa: B006
        """func(*args, **kwds) in a worker; an AsyncResult."""
        self._check_running()
        result = ApplyResult(callback, error_callback)
        self._singles_call().add(result, func, tuple(args), dict(kwds))
        return result

    def _singles_call(self):
        with self._singles_lock:
            if self._singles is None:
                self._singles = self._supervisor.open(StreamCall(self._supervisor))
            return self._singles

    # Maps into a list.

    def map(self, func, iterable, chunksize=None, *, return_exceptions=False):
        """[func(item) for item in iterable], computed by the workers; raises the first
        failure (by position) once every item is done, unless return_exceptions."""
        return self._map_async(func, iterable, chunksize, False, return_exceptions).get()

    def starmap(self, func, iterable, chunksize=None, *, return_exceptions=False):
        """map() with each item unpacked into arguments."""
        return self._map_async(func, iterable, chunksize, True, return_exceptions).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """map() without waiting: a MapResult."""
        return self._map_async(func, iterable, chunksize, False, False, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """starmap() without waiting: a MapResult."""
        return self._map_async(func, iterable, chunksize, True, False, callback, error_callback)

    def _map_async(
        self, func, iterable, chunksize, star, return_exceptions, callback=None, error=None
    ):
        result = MapResult(callback, error)
        done = _map_done(result.finish, return_exceptions)
        self._listed(func, iterable, chunksize, star, done)
        return result

    def _listed(self, func, iterable, chunksize, star, done):
        """Starts a call over iterable whose outcomes go into a list; done(values, failure)."""
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        split = True
        if chunksize is None:
            chunksize, split = default_chunksize(func, len(iterable), self._processes)
        if not iterable:
            function_ref(func)
            done([], None)
            return None
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        progress, progress_end = _progress_callback(self._progress, len(iterable))
        if progress_end is not None:
            done = _then(done, progress_end)
        call = ListedItems(
            self._supervisor, func, iterable, chunksize, star, done, progress, split=split
        )
        return self._supervisor.open(call, now=len(iterable) <= SEND_NOW)

    # Maps as iterators.

    def imap(self, func, iterable, chunksize=1, *, with_input=False, return_exceptions=False):
        """Results in input order, as an iterator; each failure is raised where it stands
        (or returned, with return_exceptions), and iteration goes on after it.

        chunksize: items sent to a worker as one job. 1 (the default) supervises each item on
        its own; larger chunks cost less per item for tiny tasks, but a crash or timeout then
        fails (after its retries) every item of its chunk. An exception raised by the function
        is always the item's own. with_input: (item, result) pairs."""
        call = self._streamed(func, iterable, chunksize, False, True, with_input)
        return IMapIterator(call, return_exceptions)

    def imap_unordered(
        self, func, iterable, chunksize=1, *, with_input=False, return_exceptions=False
    ):
        """Results as they complete (see imap)."""
        call = self._streamed(func, iterable, chunksize, False, False, with_input)
        return IMapUnorderedIterator(call, return_exceptions)

    def istarmap(self, func, iterable, chunksize=1, *, return_exceptions=False):
        """imap() with each item unpacked into arguments."""
        call = self._streamed(func, iterable, chunksize, True, True, False)
        return IMapIterator(call, return_exceptions)

    def _streamed(self, func, iterable, chunksize, star, ordered, with_input):
        self._check_running()
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, not {chunksize!r}")
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        try:
            total = len(iterable)
        except TypeError:
            total = None
        progress, progress_end = _progress_callback(self._progress, total)
        call = StreamedItems(
            self._supervisor,
            func,
            iterable,
            chunksize,
            star,
            ordered,
            progress,
            progress_end,
            with_input=with_input,
            total=total,
        )
        return self._supervisor.open(call)

    # asyncio: awaited without a thread of their own; cancelling the awaiting task drops the
    # call's jobs not run yet.

    async def amap(self, func, iterable, chunksize=None, *, return_exceptions=False):
        """map(), awaited."""
        return await self._awaited(func, iterable, chunksize, False, return_exceptions)

    async def astarmap(self, func, iterable, chunksize=None, *, return_exceptions=False):
        """starmap(), awaited."""
        return await self._awaited(func, iterable, chunksize, True, return_exceptions)

    async def aapply(self, func, args=(), kwds={}):  # noqa: B006 - as apply's
        """apply(), awaited."""
        if kwds:
            func = functools.partial(func, **kwds)
        (result,) = await self._awaited(func, [tuple(args)], 1, True, False)
        return result

    def aimap(self, func, iterable, chunksize=1, *, with_input=False, return_exceptions=False):
        """imap() as an async iterator: `async for result in pool.aimap(...)`."""
        return self.imap(
            func, iterable, chunksize, with_input=with_input, return_exceptions=return_exceptions
        )

    def aimap_unordered(
        self, func, iterable, chunksize=1, *, with_input=False, return_exceptions=False
    ):
        """imap_unordered() as an async iterator."""
        return self.imap_unordered(
            func, iterable, chunksize, with_input=with_input, return_exceptions=return_exceptions
        )

    async def _awaited(self, func, iterable, chunksize, star, return_exceptions):
        # Imported here: asyncio costs a pool that never awaits 25 ms at start.
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(ok, value):
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def finish(ok, value):
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:
                pass

        call = self._listed(func, iterable, chunksize, star, _map_done(finish, return_exceptions))
        try:
            return await future
        except asyncio.CancelledError:
            if call is not None:
                self._supervisor.cancel(call)
            raise


def _map_done(finish, return_exceptions):
    """The done(values, failure) of a listed call, told to finish(ok, value)."""

    def done(values, failure):
        if failure is None or (return_exceptions and values is not None):
            finish(True, values)
        else:
            finish(False, failure)

    return done


def _then(done, after):
    def both(values, failure):
        after()
        done(values, failure)

    return both


def _progress_callback(progress, total):
    """The function told of each result, the user's own or a tqdm bar's (progress=True), and
    the one called at the end of the call (or None)."""
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


for _cls in (Pool, ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator):
    _cls.__module__ = "corral"
