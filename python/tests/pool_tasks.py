"""Module-level functions for the corral.Pool tests (workers import them by name)."""

import os
import signal
import time

INIT_LOG = "CORRAL_TEST_INIT_LOG"
STATE = {"inits": 0}


def square(x):
    return x * x


def ident(x):
    return x


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def die_once(job):
    """SIGKILLs its own worker the first time it sees the marker's job."""
    n, marker = job
    if n == 500 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def sleep_for(seconds):
    time.sleep(seconds)
    return os.getpid()


def hold_until(path):
    """Returns at once for None, else once `path` exists (a minute at most): a slow job the
    test ends when it chooses."""
    deadline = time.monotonic() + 60
    while path is not None and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def init(tag):
    STATE["inits"] += 1
    STATE["tag"] = tag
    with open(os.environ[INIT_LOG], "a") as log:
        log.write(f"{os.getpid()}\n")


def who(_):
    return [os.getpid(), STATE["inits"], STATE.get("tag")]


def pid(_):
    return os.getpid()


def keywords(a, b=None):
    return {"a": a, "b": b}


class Custom(Exception):
    pass


def raise_custom(*args):
    raise Custom(*args)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception cannot travel")


def raise_unpicklable():
    raise Unpicklable("it cannot travel")


def kill_self_on(n):
    """SIGKILLs its worker for the item 2, every time."""
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def surrogate():
    return "name-\udcff"


def length(data):
    return len(data)


def make_bytes(n):
    return b"x" * n


REMEMBERED = {}


def remember(shared):
    REMEMBERED["shared"] = shared


def append_to(job):
    shared, value = job
    shared.append(value)


def append_remembered(n):
    REMEMBERED["shared"].append(100 + n)


def shout(text):
    print(text, flush=True)


def write_fd1(data):
    os.write(1, data)


def start_thread(n):
    """Leaves a thread running that never ends (not a daemon)."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,)).start()
    return n


def sleep_then_square(n):
    time.sleep(0.01)
    return n * n


def init_fails():
    raise ValueError("no model here")


def sleep_and_print(seconds, text):
    time.sleep(seconds)
    print(text, flush=True)


class Adder:
    def __init__(self, n):
        self.n = n

    def add(self, x):
        return x + self.n
