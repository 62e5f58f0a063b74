"""The exceptions of corral's pools. A task's own exception comes back as itself; these are for
what corral itself decided (a job that crashed its worker on every attempt, ran past its
timeout, or was cancelled), for workers that cannot start, and for an exception that could not
travel.

JobCrashed is also a concurrent.futures.process.BrokenProcessPool, so that code written for
ProcessPoolExecutor still catches it; but only that job failed, and the pool goes on. The
classes built on BrokenProcessPool are made on first use (see __getattr__): importing
concurrent.futures.process costs a pool's start about ten milliseconds, and most programs never
see a crash."""

import multiprocessing
import threading

_making = threading.Lock()

# AsyncResult.get(timeout) and IMapIterator.next(timeout) raise this, as multiprocessing does:
# it is multiprocessing.TimeoutError itself, so either name catches it.
TimeoutError = multiprocessing.TimeoutError


def remote_traceback(text, executor=False):
    """The worker's traceback, as the __cause__ of its exception: multiprocessing's
    RemoteTraceback, or concurrent.futures' own for an executor's call."""
    if executor:
        from concurrent.futures.process import _RemoteTraceback

        return _RemoteTraceback(f'\n"""\n{text}"""')
    from multiprocessing.pool import RemoteTraceback

    return RemoteTraceback(f'\n"""\n{text}"""')


class JobFailed(Exception):
    """A job that corral could not run to a result: it crashed its worker on every attempt
    ("crashed"), ran past the timeout on every attempt ("timeout"), or was dropped unrun
    ("cancelled"). `attempts` and `worker` (the pid of the last worker that ran it) come from
    corral's result; `item` is the job's input when the call asked for it."""

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
            type(self),
            (self.kind, self.message, self.attempts, self.worker, self.error_type, self.item),
        )


class JobTimedOut(JobFailed):
    """The job ran past the pool's timeout on each of its attempts; its worker was killed."""


class JobCancelled(JobFailed):
    """The job never ran: its pool was terminated first."""


def job_failed(kind, message, attempts=None, worker=None, error_type=None, item=None):
    """The JobFailed subclass for an error kind of corral's result lines."""
    if kind == "crashed":
        cls = __getattr__("JobCrashed")
    else:
        cls = {"timeout": JobTimedOut, "cancelled": JobCancelled}.get(kind, JobFailed)
    return cls(kind, message, attempts, worker, error_type, item)


class RemoteError(Exception):
    """Stands for a task's exception that could not be pickled (or unpickled here): it names
    the exception's type and message; the worker's traceback is its __cause__."""

    def __init__(self, type_name, message):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.message))


def _broken_classes():
    """JobCrashed, JobUnreadable and BrokenPool: the classes that are BrokenProcessPools."""
    from concurrent.futures.process import BrokenProcessPool

    class JobCrashed(JobFailed, BrokenProcessPool):
        """The job killed its worker on each of its attempts (a signal, an exit, a protocol
        violation). Only this job failed: the worker was replaced and the pool goes on."""

    class JobUnreadable(JobFailed, BrokenProcessPool):
        """The job's arguments could not be unpickled in the worker, or its result here (the
        unpickling error is the __cause__). Only this job failed; like JobCrashed, it is also
        a BrokenProcessPool, as the stdlib executor reports such a job."""

    class BrokenPool(BrokenProcessPool):
        """The pool's workers cannot run (they fail at start, again and again), or its
        supervisor is gone. The worker's own exception, when it raised one, is the
        __cause__."""

    return {cls.__name__: cls for cls in (JobCrashed, JobUnreadable, BrokenPool)}


def __getattr__(name):
    if name not in ("JobCrashed", "JobUnreadable", "BrokenPool"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _making:
        # Made once: two threads asking at once must get the same classes.
        if name not in globals():
            made = _broken_classes()
            for cls in made.values():
                cls.__module__ = "corral"
                cls.__qualname__ = cls.__name__
            globals().update(made)
    return globals()[name]


for _cls in (JobFailed, JobTimedOut, JobCancelled, RemoteError):
    _cls.__module__ = "corral"
