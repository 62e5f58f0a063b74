"""Benchmark of what the service and the scheduler promise each client and each job:

  (a) a one-job client's latency (submit to its result) on an idle `corral serve -j 2`, and
      while another client's 20,000 jobs of 5 ms run (target: within two batch times, 2 x 16
      ms, of the idle case);
  (b) N jobs of 2 s on N workers, `seq N | corral run -jN --lines --shell --exec 'sleep 2 #
      {}'`: wall time (target: one job's time plus start-up).

Run alone: python3 scripts/bench/service.py [ROUNDS] (after cargo build --release); it prints
the markdown.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORRAL = os.path.join(ROOT, "target", "release", "corral")
BIG_JOBS = 20_000
SMALL_SAMPLES = 20
BATCH_MS = 16
SLEEP_WORKERS = (2, 4)
SMALL_JOB = b'{"id":1,"task":"sum_squares","input":[1]}\n'


def _status(socket):
    out = subprocess.run(
        [CORRAL, "status", "--json", "--socket", socket], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def _wait(check, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit("the service did not get there in time")


def _small(socket):
    started = time.perf_counter()
    subprocess.run(
        [CORRAL, "submit", "-q", "--socket", socket],
        input=SMALL_JOB,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def latency_round():
    """Medians, in seconds, of a one-job client's latency: idle, then under a big client."""
    work = tempfile.mkdtemp(prefix="corral-bench-service-")
    socket = os.path.join(work, "s.sock")
    jobs = os.path.join(work, "big.jsonl")
    with open(jobs, "w") as f:
        for i in range(BIG_JOBS):
            f.write(f'{{"id":{i},"task":"spin","input":5}}\n')
    service = subprocess.Popen(
        [CORRAL, "serve", "-q", "--socket", socket, "-j", "2"], stderr=subprocess.DEVNULL
    )
    big = None
    try:
        _wait(lambda: (_status(socket) or {}).get("ready", 0) >= 2, 20)
        idle = [_small(socket) for _ in range(SMALL_SAMPLES)]
        big = subprocess.Popen(
            [CORRAL, "submit", "-q", "--socket", socket, jobs],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: (_status(socket) or {}).get("queued", 0) > 1000, 20)
        loaded = [_small(socket) for _ in range(SMALL_SAMPLES)]
        still = (_status(socket) or {}).get("queued", 0)
        if still == 0:
            raise SystemExit("the big client ran out of work during the measurement")
        return statistics.median(idle), statistics.median(loaded)
    finally:
        for proc in (big, service):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def sleep_round(workers):
    """Wall seconds of N jobs of 2 s on N workers."""
    started = time.perf_counter()
    subprocess.run(
        [CORRAL, "run", "-q", f"-j{workers}", "--lines", "--shell", "--exec", "sleep 2 # {}"],
        input="".join(f"{i}\n" for i in range(workers)).encode(),
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def measure(rounds, log=print):
    idle, loaded, sleeps = [], [], {n: [] for n in SLEEP_WORKERS}
    for r in range(rounds):
        calm, busy = latency_round()
        idle.append(calm)
        loaded.append(busy)
        for n in SLEEP_WORKERS:
            sleeps[n].append(sleep_round(n))
        log(f"   service: round {r + 1} of {rounds} done")
    return {
        "idle": statistics.median(idle),
        "loaded": statistics.median(loaded),
        "sleeps": {n: statistics.median(ts) for n, ts in sleeps.items()},
    }


def report(medians, rounds):
    idle, loaded = medians["idle"], medians["loaded"]
    within = loaded - idle <= 2 * BATCH_MS / 1000
    rows = [
        (
            f"Service: one-job client's latency under a {BIG_JOBS:,} x 5 ms client, minus idle",
            f"{(loaded - idle) * 1e3:+.1f} ms",
            f"<= {2 * BATCH_MS} ms (two batch times)",
            "met" if within else "**not met**",
        )
    ]
    for n, t in medians["sleeps"].items():
        rows.append(
            (
                f"{n} jobs of 2 s on -j {n}: wall time",
                f"{t:.2f} s",
                "one job's time plus start-up",
                "met" if t < 2.5 else "**not met**",
            )
        )
    lines = [
        "## The service's clients, and slow jobs on as many workers",
        "",
        f"Medians of {rounds} rounds (`python3 scripts/bench/service.py {rounds}`); each round "
        f"starts `corral serve -j 2`, times {SMALL_SAMPLES} one-job `corral submit`s idle, then "
        f"{SMALL_SAMPLES} more while another client's {BIG_JOBS:,} jobs of 5 ms are queued.",
        "",
        "| what | median |",
        "| --- | --- |",
        f"| one-job client, idle service | {idle * 1e3:.1f} ms |",
        f"| one-job client, beside a {BIG_JOBS:,} x 5 ms client | {loaded * 1e3:.1f} ms |",
    ]
    for n, t in medians["sleeps"].items():
        lines.append(f"| `seq {n} \\| corral run -j{n} --exec 'sleep 2 # {{}}'` | {t:.2f} s |")
    lines.append("")
    return rows, lines


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    medians = measure(rounds, log=lambda m: print(m, file=sys.stderr, flush=True))
    rows, lines = report(medians, rounds)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
