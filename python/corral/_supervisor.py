"""One corral supervisor for a pool's whole life: `corral mux` as a child of this process, its
workers started once, and every call of the pool (a map, an apply, a submit, from any thread)
a call of its own on that one engine (see supervisor/src/mux.rs for the lines on the pipes).

Two threads serve it. The feeder writes the calls' job lines, a call at a time in turn, each
call holding at most its window of jobs in the supervisor (so memory stays bounded, a long map
cannot shut out an apply made after it, and a call's cancel line is never stuck behind
another's jobs); it consumes the callers' iterables, as multiprocessing's task handler does.
The reader reads every result line at once as it comes and hands each call its own, so an
unread or abandoned call never blocks the pipe. Neither holds the pool itself, so a pool that
nobody holds is garbage-collected (and warns, as multiprocessing's does).
"""

import atexit
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref

from corral import _spawn
from corral._binary import corral_binary

# Jobs of one call in the supervisor at once (queued or running), unless the call says less.
CALL_WINDOW = 4096
# Jobs of every call in the supervisor at once: well under what `corral mux` queues.
TOTAL_WINDOW = 1 << 19
# Jobs of one call written in one turn.
FEED_CHUNK = 1024
# Bytes read from the supervisor at a time.
READ_BYTES = 1 << 18

_live = weakref.WeakSet()
# Set once the interpreter begins to exit: an executor takes no more work then.
interpreter_exiting = False


def _at_exit():
    """At interpreter exit, as the stdlib does it: an executor finishes the work it was given
    (concurrent.futures waits for it), a pool is terminated (multiprocessing's are); no
    supervisor outlives this process either way."""
    global interpreter_exiting
    interpreter_exiting = True
    for supervisor in list(_live):
        if supervisor.executor:
            supervisor.close()
            supervisor.join()
        else:
            supervisor.terminate()


# Before the interpreter joins its threads, where concurrent.futures registers its own.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_at_exit)


class Supervisor:
    """The `corral mux` process of one pool, with its feeder and reader threads."""

    def __init__(
        self, processes, initializer, initargs, max_tasks, timeout, retries, executor=False
    ):
        _spawn.check_not_bootstrapping()
        self.processes = processes
        self.directory = tempfile.mkdtemp(prefix="corral-pool-")
        # Reentrant: a pool or executor collected by the garbage collector, which may run while
        # this thread holds the lock, closes its supervisor.
        self.lock = threading.RLock()
        # Held while writing to the supervisor, by the feeder or a caller sending its own jobs.
        self.write_lock = threading.Lock()
        # The feeder waits on it for work, room, a close or a cancel.
        self.feedable = threading.Condition(self.lock)
        self.calls = {}
        self.feeding = []
        self.controls = []
        self.next_call = 1
        self.in_flight = 0
        # The feeder waits for room in a call's window (see room_made).
        self.starved = False
        self.closing = False
        self.terminated = False
        # Set once the supervisor can run nothing more: (message, start failure record).
        self.broken = None
        self.error_message = None
        env = self._environment()
        # The workers print where this process prints, as multiprocessing's children do: its
        # stdout and stderr go down to them through corral, which leaves them alone.
        passed = []
        for variable, fd in (("CORRAL_POOL_STDOUT", 1), ("CORRAL_POOL_STDERR", 2)):
            try:
                passed.append(os.dup(fd))
            except OSError:
                continue
            env[variable] = str(passed[-1])
        self.executor = executor
        try:
            passed += _spawn.write_preparation(self.directory, initializer, initargs, executor)
            self.proc = subprocess.Popen(
                self._command(processes, max_tasks, timeout, retries),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                env=env,
                pass_fds=passed,
                # Its own session: a Ctrl-C reaches this process only, and the pool decides.
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        finally:
            for fd in passed:
                os.close(fd)

        self.feeder = threading.Thread(target=self._feed, name="corral-feeder", daemon=True)
        self.reader = threading.Thread(target=self._read, name="corral-results", daemon=True)
        self.feeder.start()
        self.reader.start()
        _live.add(self)

    def _command(self, processes, max_tasks, timeout, retries):
        worker = f"{shlex.quote(sys.executable)} -m corral._pool_worker"
        cmd = [corral_binary(), "mux", "-q", "--exit-with-parent", "--worker-cmd", worker]
        # corral removes the pool's directory should this process die first (even by SIGKILL).
        cmd += ["--scratch", self.directory]
        cmd += ["-j", str(processes), "--retries", str(retries)]
        if timeout is not None:
            cmd += ["--timeout", timeout]
        if max_tasks:
            cmd += ["--max-jobs-per-worker", str(max_tasks)]
        return cmd

    def _environment(self):
        env = dict(os.environ)
        # The workers import this package from where this process has it; everything else
        # they import from the sys.path of this process, set in each worker (see _spawn).
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [here, env.get("PYTHONPATH", "")] if p)
        env["CORRAL_POOL_DIR"] = self.directory
        return env

    # The callers' side.

    def open(self, call, now=False):
        """Numbers a call and queues its jobs to be sent; with `now`, a small call whose jobs
        all fit in its window, the calling thread sends them itself (a hand-over to the feeder
        costs more than the sending)."""
        with self.lock:
            if self.broken is not None:
                call.break_(self.broken_exception)
                return call
            call.number = self.next_call
            self.next_call += 1
            self.calls[call.number] = call
            if not now:
                self.feeding.append(call)
                self.feedable.notify()
                return call
        lines, ended = call.lines(call.room())
        with self.lock:
            call.sent += len(lines)
            self.in_flight += len(lines)
            if ended:
                call.exhausted = True
                call.check_finished()
            else:
                self.feeding.append(call)
                self.feedable.notify()
        self.send(call, lines, ended)
        return call

    def send(self, call, lines, ended, controls=()):
        """Writes control lines, then a call's job lines (and its end); from any thread. False
        if the supervisor is gone: the reader then fails the calls it had not answered."""
        out = list(controls)
        if lines:
            out.append(b'{"corral":"call","call":%d}\n' % call.number)
            out.extend(lines)
        if ended:
            out.append(b'{"corral":"end","call":%d}\n' % call.number)
        if not out:
            return True
        with self.write_lock:
            try:
                _write_all(self.proc.stdin.fileno(), b"".join(out))
            except (OSError, ValueError):
                # A closed pipe, or a file already closed at the end.
                return False
        return True

    def wake(self):
        """Tells the feeder a call has new jobs; the lock is held."""
        self.feedable.notify()

    def room_made(self):
        """Tells the feeder a call's window has room again, if it waits for that; the lock is
        held. (Results come often: waking a feeder that waits for nothing costs a thread
        switch each time.)"""
        if self.starved:
            self.starved = False
            self.feedable.notify()

    def cancel(self, call):
        """Drops what a call has not run yet; its results from now on are discarded."""
        with self.lock:
            if self.calls.pop(call.number, None) is None:
                return
            self.in_flight -= call.sent - call.answered
            call.cancelled = True
            if call in self.feeding:
                self.feeding.remove(call)
            self.controls.append(b'{"corral":"cancel","call":%d}\n' % call.number)
            self.feedable.notify()

    def finished(self, call):
        """A call is answered in full; the lock is held."""
        self.calls.pop(call.number, None)

    def close(self):
        """No more calls: once every call's jobs are sent, the supervisor's input ends, and it
        exits when every call is answered."""
        with self.lock:
            self.closing = True
            self.feedable.notify()

    def terminate(self):
        """Ends the supervisor and its workers at once; calls not answered fail."""
        with self.lock:
            if self.terminated:
                return
            self.terminated = self.closing = True
            self.feedable.notify()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.join()

    def abandon(self):
        """Kills the supervisor without waiting for anything (a pool collected while
        running); the reader cleans up once it has ended."""
        self.terminated = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def join(self, timeout=None):
        """Waits for the supervisor to end (after close or terminate); True once it has."""
        for thread in (self.feeder, self.reader):
            if thread is not threading.current_thread():
                thread.join(timeout)
        if self.reader.is_alive():
            return False
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
        _live.discard(self)
        return True

    def broken_exception(self, executor=False):
        """The exception for a call that cannot run: the worker's own exception when a worker
        could not start (for an executor, BrokenProcessPool caused by it), else BrokenPool."""
        from corral._codec import exception
        from corral._errors import BrokenPool, JobCancelled

        message, record = self.broken
        if self.terminated and record is None:
            return JobCancelled("cancelled", "the pool was terminated before this job ran")
        cause = exception(record) if record is not None else None
        if cause is not None and not executor:
            return cause
        broken = BrokenPool(message)
        broken.__cause__ = cause
        return broken

    # The feeder.

    def _feed(self):
        try:
            while True:
                turn = self._next_turn()
                if turn is None:
                    return
                controls, batch = turn
                for call, room in batch:
                    lines, ended = call.lines(room)
                    with self.lock:
                        if call.cancelled:
                            continue
                        call.sent += len(lines)
                        self.in_flight += len(lines)
                        if ended:
                            call.exhausted = True
                            if call in self.feeding:
                                self.feeding.remove(call)
                            call.check_finished()
                    if not self.send(call, lines, ended, controls):
                        return
                    controls = ()
                # Control lines not sent with a call's (it was cancelled meanwhile).
                if controls and not self.send(None, (), False, controls):
                    return
                # Nothing of a call may stay alive here while the feeder waits.
                turn = batch = call = lines = None
        except OSError:
            # The supervisor is gone; the reader tells the calls.
            pass
        finally:
            with self.write_lock:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass

    def _next_turn(self):
        """Waits for something to send: (control lines, [(call, room)]), or None when the
        input is to end."""
        with self.lock:
            while True:
                if self.broken is not None or self.terminated:
                    return None
                controls, self.controls = self.controls, []
                batch = []
                total_room = TOTAL_WINDOW - self.in_flight
                for call in self.feeding:
                    if not call.has_work(self.closing):
                        continue
                    room = min(call.room(), FEED_CHUNK, total_room)
                    if room > 0:
                        batch.append((call, room))
                        total_room -= room
                    else:
                        self.starved = True
                if controls or batch:
                    return controls, batch
                if self.closing and not self.feeding:
                    return None
                self.feedable.wait()

    # The reader.

    def _read(self):
        stdout = self.proc.stdout.fileno()
        rest = b""
        while True:
            try:
                data = os.read(stdout, READ_BYTES)
            except OSError:
                data = b""
            if not data:
                break
            if rest:
                data = rest + data
            end = data.rfind(b"\n")
            if end < 0:
                rest = data
                continue
            rest = data[end + 1 :]
            # In a call of its own, so that nothing of a call outlives its results here.
            self._dispatch(data[:end])
        status = self.proc.wait()
        self._ended(status)
        shutil.rmtree(self.directory, ignore_errors=True)
        _live.discard(self)

    def _dispatch(self, lines):
        """Hands each call the results among `lines` that are its own."""
        loads = json.loads
        groups = {}
        for line in lines.split(b"\n"):
            if line.startswith(b'{"corral":'):
                self._said(line)
                continue
            record = loads(line)
            job = record.get("id")
            if type(job) is not int:
                continue
            group = groups.get(job >> 32)
            if group is None:
                group = groups[job >> 32] = []
            group.append((job & 0xFFFFFFFF, record))
        calls = self.calls
        for number, results in groups.items():
            call = calls.get(number)
            if call is not None:
                call.take(results)

    def _said(self, line):
        try:
            said = json.loads(line)
        except ValueError:
            return
        if said.get("corral") == "error":
            self.error_message = said.get("message")

    def _ended(self, status):
        """The supervisor is gone: every call not answered fails."""
        record = _spawn.read_start_failure(self.directory)
        if self.error_message is not None:
            message = f"the pool's workers cannot run: {self.error_message}"
        else:
            message = f"the pool's supervisor ended (status {status}) with calls unanswered"
        with self.lock:
            self.broken = (message, record)
            calls = list(self.calls.values())
            self.calls.clear()
            self.feeding.clear()
            self.feedable.notify()
        for call in calls:
            call.break_(self.broken_exception)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
