"""What each Python process pool does when things go wrong: a worker SIGKILLed mid-run, a task
that hangs, a task that raises, and the parent interrupted by Ctrl-C. Part of the Python pools
benchmark (pools.py runs it and puts the table in BENCHMARKS.md).

Each scenario runs in a fresh interpreter, `pool_failures.py --scenario NAME POOL`, which prints
what it saw; the harness gives it a deadline and kills its process group past it ("hangs").
Each pool gets its own way of bounding a task where it has one (corral's and pebble's per-task
timeout); multiprocessing.Pool, ProcessPoolExecutor and loky have none.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
POOLS = (
    "corral.Pool",
    "corral.ProcessPoolExecutor",
    "multiprocessing.Pool",
    "ProcessPoolExecutor",
    "pebble",
    "loky",
)
DEADLINE = 20
TASK_TIMEOUT = 2


def die_once(job):
    """SIGKILLs its worker the first time it sees job 1000 (a marker file says it did)."""
    n, marker = job
    if n == 1000 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def hang_on_ten(n):
    if n == 10:
        time.sleep(3600)
    return n


def raise_on_fifty(n):
    if n == 50:
        raise ValueError("fifty")
    return n


def sleep_for(seconds):
    time.sleep(seconds)
    return os.getpid()


@contextlib.contextmanager
def results(pool, fn, items, chunk=1, timeout=None):
    """An iterator over fn's results on items from a two-worker pool of the named kind (spawn
    start method); timeout is the per-task timeout, for the pools that have one."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    if pool == "corral.Pool":
        import corral

        with corral.Pool(processes=2, timeout=timeout) as p:
            yield p.imap(fn, items, chunksize=chunk)
    elif pool == "corral.ProcessPoolExecutor":
        import corral

        with corral.ProcessPoolExecutor(2, timeout=timeout) as p:
            yield p.map(fn, items, chunksize=chunk)
    elif pool == "multiprocessing.Pool":
        with ctx.Pool(2) as p:
            yield p.imap(fn, items, chunksize=chunk)
    elif pool == "ProcessPoolExecutor":
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2, mp_context=ctx) as p:
            yield p.map(fn, items, chunksize=chunk)
    elif pool == "pebble":
        from pebble import ProcessPool

        with ProcessPool(2, context=ctx) as p:
            yield p.map(fn, items, chunksize=chunk, timeout=timeout).result()
    elif pool == "loky":
        from loky import get_reusable_executor

        p = get_reusable_executor(max_workers=2)
        try:
            yield p.map(fn, items, chunksize=chunk)
        finally:
            p.shutdown()
    else:
        raise SystemExit(f"unknown pool {pool}")


def drain(iterator):
    """Reads every result it can, going on past exceptions: (results, exception names)."""
    got, errors = 0, []
    while True:
        try:
            next(iterator)
            got += 1
        except StopIteration:
            return got, errors
        except Exception as exc:  # noqa: BLE001 - what the pool raised is the finding
            errors.append(type(exc).__name__)
            if len(errors) > 100:
                return got, errors


def describe(got, total, errors):
    text = f"{got:,} of {total:,} results"
    if errors:
        kinds = sorted(set(errors))
        text += f"; raised {', '.join(kinds)}" + (f" ({len(errors)}x)" if len(errors) > 1 else "")
    return text


def scenario(name, pool):
    if name == "killed":
        marker = os.path.join(ROOT, "target", "bench", f"killed-{pool}")
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        if os.path.exists(marker):
            os.remove(marker)
        items = [(i, marker) for i in range(4_000)]
        with results(pool, die_once, items, chunk=16) as it:
            got, errors = drain(it)
        print(describe(got, len(items), errors))
    elif name == "hangs":
        with results(pool, hang_on_ten, range(40), timeout=TASK_TIMEOUT) as it:
            got, errors = drain(it)
        print(describe(got, 40, errors))
    elif name == "raises":
        with results(pool, raise_on_fifty, range(100)) as it:
            got, errors = drain(it)
        print(describe(got, 100, errors))
    elif name == "interrupted":
        # As in a terminal: a shell that started the benchmark in the background leaves SIGINT
        # ignored, and Python then never raises KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with results(pool, sleep_for, [30] * 8) as it:
            print("started", flush=True)
            drain(it)
    else:
        raise SystemExit(f"unknown scenario {name}")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def descendants(root):
    """The pids of every living descendant of root."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_until(check, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def run_one(exe, env, name, pool):
    """The outcome of one scenario for one pool, as a table cell."""
    proc = subprocess.Popen(
        [exe, __file__, "--scenario", name, pool],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if name == "interrupted":
            return interrupt(proc)
        started = time.monotonic()
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            return f"hangs: no end after {DEADLINE} s (stopped)"
        took = time.monotonic() - started
        if proc.returncode == 0:
            return f"finishes in {took:.1f} s: {out.strip()}"
        last = (err.strip().splitlines() or ["?"])[-1]
        return f"fails: {last[:120]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def interrupt(proc):
    """Ctrl-C (SIGINT to the parent's process group, as a terminal sends it) once the tasks
    run; then whether the parent ends and whether any of its processes outlive it."""
    if proc.stdout.readline().strip() != "started":
        return "fails: did not start"
    # The workers are up once the parent has at least two descendants.
    wait_until(lambda: len(descendants(proc.pid)) >= 2, 10)
    time.sleep(0.5)
    family = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    try:
        proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        left = sum(alive(p) for p in family)
        return f"does not end: the parent still waits after {DEADLINE} s ({left} processes alive)"
    took = time.monotonic() - started
    wait_until(lambda: not any(alive(p) for p in family), 2)
    left = [p for p in family if alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        return (
            f"the parent ends in {took:.1f} s; {len(left)} of its processes still alive 2 s later"
        )
    return f"the parent ends in {took:.1f} s; no process left"


SCENARIOS = {
    "killed": "a worker SIGKILLed (4,000 tasks, chunksize 16)",
    "hangs": f"a task hangs (40 tasks; per-task timeout {TASK_TIMEOUT} s where the pool has one)",
    "raises": "a task raises (100 tasks; iteration goes on past the exception)",
    "interrupted": "Ctrl-C in the parent while 8 tasks of 30 s run",
}


def table(exe, env, log=print):
    """The markdown table: one row a scenario, one column a pool."""
    lines = [
        "| scenario | " + " | ".join(POOLS) + " |",
        "| --- | " + " | ".join("---" for _ in POOLS) + " |",
    ]
    for name, title in SCENARIOS.items():
        cells = []
        for pool in POOLS:
            outcome = run_one(exe, env, name, pool)
            log(f"   {name} / {pool}: {outcome}")
            cells.append(outcome)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--scenario"]:
        scenario(*sys.argv[2:4])
    else:
        raise SystemExit("run by pools.py: python3 scripts/bench/pools.py")
