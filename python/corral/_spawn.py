"""What a pool's worker sees of its parent, as multiprocessing's spawn start method hands it
over: the parent's sys.path, sys.argv, working directory and authkey, its __main__ run again as
__mp_main__ (a script by path, a `python -m` module by name; a script on stdin or `-c` has
nothing to run again), then the initializer. The parent writes it once per pool to a file only
its user can read, in the pool's private directory; each worker reads it at start.

A worker that cannot start (its __main__ raises, the initializer raises, a module is missing)
writes its exception and traceback beside it, for the parent to raise in the call that needed
the worker. And while a worker runs the parent's __main__ again, making a pool is the error
spawn users know: a script without `if __name__ == "__main__":` would otherwise start pools
from every worker.
"""

import os
import pickle
import sys

# Set while a worker runs its parent's __main__ again.
bootstrapping = False

PREPARATION = "preparation"
START_ERROR = "start-error"

BOOTSTRAP_MESSAGE = """
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable.

        To fix this issue, refer to the "Safe importing of main module"
        section in https://docs.python.org/3/library/multiprocessing.html
        """


def check_not_bootstrapping():
    """RuntimeError, as spawn raises it, in a worker still running its parent's __main__."""
    if bootstrapping:
        raise RuntimeError(BOOTSTRAP_MESSAGE)


def main_to_run_again():
    """How workers find this process's __main__: ("name", module) for `python -m module`,
    ("path", file) for a script, or None when there is nothing to run again (stdin, -c, an
    interactive session)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        if name == "__main__" or name.endswith(".__main__"):
            return None
        return ("name", name)
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return ("path", os.path.abspath(path))
    return None


def main_is_importable():
    """Whether functions defined in this process's __main__ can be found by workers."""
    return main_to_run_again() is not None


class _Spawning:
    """Stands for multiprocessing's spawning Popen while the initializer and its arguments are
    pickled, as spawn pickles them: queues, locks and pipes among them may then be pickled,
    and the file descriptors they hold are duplicated for the workers, which inherit them
    through corral at the same numbers (as a spawn child inherits them from its Popen)."""

    def __init__(self):
        self.fds = []

    def duplicate_for_child(self, fd):
        fd = os.dup(fd)
        self.fds.append(fd)
        return fd

    DupFd = duplicate_for_child


def write_preparation(directory, initializer, initargs, executor):
    """Writes what every worker of the pool needs (see the module's docstring); returns the
    file descriptors the workers must inherit (the caller closes them once they are passed)."""
    import multiprocessing
    from multiprocessing import context
    from multiprocessing.reduction import ForkingPickler

    spawning = _Spawning()
    pickled = None
    if initializer is not None:
        context.set_spawning_popen(spawning)
        try:
            # Pickled apart: it may name a function of __main__, which exists in the worker
            # only once __main__ has run again there.
            pickled = bytes(ForkingPickler.dumps((initializer, tuple(initargs))))
        except BaseException:
            for fd in spawning.fds:
                os.close(fd)
            raise
        finally:
            context.set_spawning_popen(None)
    data = {
        "sys_path": list(sys.path),
        "sys_argv": list(sys.argv),
        "cwd": os.getcwd(),
        "authkey": bytes(multiprocessing.current_process().authkey),
        "main": main_to_run_again(),
        "initializer": pickled,
        "executor": executor,
    }
    path = os.path.join(directory, PREPARATION)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return spawning.fds


def prepare(directory):
    """In a worker: becomes what a spawn child of the parent is, and runs the initializer.
    Returns whether the pool is a concurrent.futures executor."""
    global bootstrapping
    with open(os.path.join(directory, PREPARATION), "rb") as f:
        data = pickle.load(f)
    sys.path[:] = data["sys_path"]
    sys.argv[:] = data["sys_argv"]
    os.chdir(data["cwd"])
    import multiprocessing

    multiprocessing.current_process().authkey = data["authkey"]
    main = data["main"]
    if main is not None:
        import runpy

        bootstrapping = True
        try:
            kind, where = main
            module = type(sys)("__mp_main__")
            if kind == "name":
                found = runpy.run_module(where, run_name="__mp_main__", alter_sys=False)
            else:
                found = runpy.run_path(where, run_name="__mp_main__")
            module.__dict__.update(found)
            sys.modules["__mp_main__"] = sys.modules["__main__"] = module
        finally:
            bootstrapping = False
    if data["initializer"] is not None:
        initializer, initargs = pickle.loads(data["initializer"])
        try:
            initializer(*initargs)
        except BaseException:
            if data["executor"]:
                # Where concurrent.futures' own workers say it.
                import logging

                logging.getLogger("concurrent.futures").critical(
                    "Exception in initializer:", exc_info=True
                )
            raise
    return data["executor"]


def report_start_failure(directory, exc):
    """In a worker that cannot start: its exception and traceback, for the parent."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(text)
    record = exception_record(exc, text)
    temporary = os.path.join(directory, f"{START_ERROR}.{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(record)
        os.replace(temporary, os.path.join(directory, START_ERROR))
    except OSError:
        pass


def exception_record(exc, text=None):
    """An exception as bytes the parent turns back into it (see codec.exception): pickled with
    its traceback's text, or by type and message when it cannot be pickled and unpickled."""
    if text is None:
        # Imported here: a worker pays for traceback only when something fails.
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)
    except Exception:  # noqa: BLE001 - any exception that does not survive pickle
        pickled = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return pickle.dumps((pickled, name, str(exc), text), protocol=pickle.HIGHEST_PROTOCOL)


def read_start_failure(directory):
    """The exception record a worker left when it could not start, or None."""
    try:
        with open(os.path.join(directory, START_ERROR), "rb") as f:
            return f.read()
    except OSError:
        return None
