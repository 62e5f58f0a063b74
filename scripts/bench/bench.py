"""corral's benchmark suite: every contender side by side in one run, medians and ratios.

Run it through scripts/bench/run, which builds the release binaries first. Scenarios:
  1. tiny jobs: 1,000,000 sum_squares jobs, corral -j 2 against Python's multiprocessing.Pool
     (spawn, best of chunksizes 64/256/1024), the single-process Rust baseline, and GNU parallel
     (splitting the file into parts for two copies of the baseline; and, on the first 1,000
     jobs, one process per job, its everyday use);
  2. CPU-bound: 400 spin jobs of 25 ms of CPU time, corral -j 1 and -j 2 against the serial time;
  3. memory: corral's own peak RSS on 1M and 10M tiny jobs streamed from a pipe;
  4. recovery: worker death to replacement hello (median of 200 kills), and tiny-jobs
     throughput while a worker is SIGKILLed every 100 ms;
  5. and 6. Python workers against multiprocessing.Pool, and commands per line against xargs,
     GNU parallel and rust-parallel (scripts/bench/workers.py);
  7. corral.Pool against multiprocessing, concurrent.futures, pebble and loky
     (scripts/bench/pools.py), and the cost of a call: a loop of small maps, a storm of submits
     (scripts/bench/pool_calls.py); the service's clients and N slow jobs on N workers
     (scripts/bench/service.py); threads, fds and start-up at -j 2, 64, 256
     (scripts/bench/threads.py);
  8. sharding (scripts/bench/shards.py) and the data path: tiny jobs against a plain serde_json
     loop, instructions per job on each serial thread, and a projection to 64 cores
     (scripts/bench/datapath.py).
Writes the table to BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
WORK = os.path.join(ROOT, "target", "bench")
CORRAL = os.path.join(BIN, "corral")
TOOL = os.path.join(BIN, "corral-bench")
POOL = os.path.join(ROOT, "scripts", "bench", "pool.py")


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_measured(cmd, stdin_path=None, stdout_path=os.devnull, env=None):
    """Runs cmd to completion; returns its wall time and the CPU time (user + system) of it and
    of every process it waited for, in seconds. Fails loudly on error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(stdin_path or os.devnull, "rb") as stdin, open(stdout_path, "wb") as stdout:
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env)
        elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode()[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def run_timed(cmd, stdin_path=None, stdout_path=os.devnull, env=None):
    """Runs cmd to completion; returns its wall time in seconds."""
    return run_measured(cmd, stdin_path, stdout_path, env)[0]


def generate(path, *args):
    if not os.path.exists(path):
        with open(path, "wb") as out:
            subprocess.run([TOOL, "gen", *args], stdout=out, check=True)
    return path


def count_lines(path):
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def outputs_by_id(path):
    """id -> output of every ok result line; fails on a duplicate id or a failed result."""
    result = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("ok") is not True:
                raise SystemExit(f"{path}: a job failed: {line}")
            if record["id"] in result:
                raise SystemExit(f"{path}: id {record['id']} appears twice")
            result[record["id"]] = record["output"]
    return result


def children_of(pid):
    """The live (not zombie) child processes of pid, whichever of its threads started them.

    Read from each thread's `children` file rather than by scanning all of /proc: the kill
    storm calls this ten times a second on a machine whose CPUs corral keeps busy."""
    children = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                candidates = [int(child) for child in f.read().split()]
        except OSError:
            continue
        for child in candidates:
            try:
                with open(f"/proc/{child}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2 :].split()[0] != "Z":
                children.append(child)
    return children


def gnu_parallel():
    """The path of GNU parallel, installing Debian's package if it is missing; None if it cannot be had."""
    found = shutil.which("parallel")
    if found is None and shutil.which("apt-get"):
        log("   installing GNU parallel (Debian package 'parallel')")
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run(
            [*prefix, "apt-get", "install", "-y", "-q", "parallel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        found = shutil.which("parallel")
    if found is None:
        log("   GNU parallel is not available: its rows are left out")
    return found


def fmt_s(seconds):
    return f"{seconds:.3f} s"


def scenario_tiny(runs, py_runs, parallel):
    log("== tiny jobs: 1,000,000 sum_squares")
    jobs = generate(os.path.join(WORK, "tiny-1m.jsonl"), "tiny", "1000000")
    out = os.path.join(WORK, "tiny.out")
    # GNU parallel cuts the file into 8 parts per job slot and runs the single-process baseline
    # on each: the best a shell pipeline can do with a compiled program and no supervisor.
    pipepart = "GNU parallel --pipepart -j 2, baseline per part"
    times = {"corral -j 2": [], "single-process baseline": []}
    cpu = {"corral -j 2": [], "single-process baseline": []}
    if parallel:
        times[pipepart] = []
    for chunk in (64, 256, 1024):
        times[f"Python Pool, chunksize {chunk}"] = []
    checked = set()

    def check(name):
        if name != "corral -j 2" and name not in checked:
            assert outputs_by_id(out) == corral_outputs, f"{name} and corral disagree"
            checked.add(name)

    for r in range(max(runs, py_runs)):
        if r < runs:
            for name, cmd, stdin in (
                ("corral -j 2", [CORRAL, "run", "-j", "2", "-q", jobs], None),
                ("single-process baseline", [TOOL, "floor"], jobs),
            ):
                wall, used = run_measured(cmd, stdin_path=stdin, stdout_path=out)
                times[name].append(wall)
                cpu[name].append(used)
                if r == 0 and name == "corral -j 2":
                    corral_outputs = outputs_by_id(out)
                check(name)
            if parallel:
                cmd = [
                    parallel,
                    "--will-cite",
                    "--pipepart",
                    "-a",
                    jobs,
                    "--block",
                    "-8",
                    "-j",
                    "2",
                    TOOL,
                    "floor",
                ]
                times[pipepart].append(run_timed(cmd, stdout_path=out))
                check(pipepart)
        if r < py_runs:
            for chunk in (64, 256, 1024):
                name = f"Python Pool, chunksize {chunk}"
                times[name].append(
                    run_timed([sys.executable, POOL, jobs, "2", str(chunk)], stdout_path=out)
                )
                check(name)
        log(
            f"   round {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if len(v) > r)
        )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_medians = {name: statistics.median(ts) for name, ts in cpu.items()}
    return medians, cpu_medians


def scenario_per_job_parallel(parallel, runs):
    """GNU parallel as it is mostly used: one process per job, here the baseline on one line."""
    log("== GNU parallel, one process per job, on the first 1,000 tiny jobs")
    jobs = generate(os.path.join(WORK, "tiny-1k.jsonl"), "tiny", "1000")
    out = os.path.join(WORK, "tiny-1k.out")
    times = []
    for r in range(runs):
        cmd = [parallel, "--will-cite", "--pipe", "-N1", "-j", "2", TOOL, "floor"]
        times.append(run_timed(cmd, stdin_path=jobs, stdout_path=out))
        if r == 0:
            run_timed([CORRAL, "run", "-j", "2", "-q", jobs], stdout_path=out + ".corral")
            assert outputs_by_id(out) == outputs_by_id(out + ".corral"), (
                "GNU parallel and corral disagree"
            )
        log(f"   round {r + 1}: {times[-1]:.2f}s")
    return statistics.median(times)


def scenario_cpu(runs):
    log("== CPU-bound: 400 spin jobs of 25 ms of CPU time each")
    jobs = generate(os.path.join(WORK, "spin-400-25.jsonl"), "spin", "400", "25")
    times = {"serial (single process)": [], "corral -j 1": [], "corral -j 2": []}
    for r in range(runs):
        times["serial (single process)"].append(run_timed([TOOL, "floor"], stdin_path=jobs))
        times["corral -j 1"].append(run_timed([CORRAL, "run", "-j", "1", "-q", jobs]))
        times["corral -j 2"].append(run_timed([CORRAL, "run", "-j", "2", "-q", jobs]))
        log(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return medians


# Five rather than three: a peak is the largest spike of a run, so single peaks scatter widely.
MEMORY_RUNS = 5


def scenario_memory(runs):
    log("== memory: supervisor peak RSS, jobs streamed from a pipe")
    samples = {1_000_000: [], 10_000_000: []}
    series = {}
    for _ in range(runs):
        for n in samples:
            stats = os.path.join(WORK, f"stats-{n}.json")
            gen = subprocess.Popen([TOOL, "gen", "tiny", str(n)], stdout=subprocess.PIPE)
            started = time.perf_counter()
            proc = subprocess.Popen(
                [CORRAL, "run", "-j", "2", "-q", "--stats", stats],
                stdin=gen.stdout,
                stdout=subprocess.DEVNULL,
            )
            # Resident memory over the run, sampled every 250 ms: does it grow with the jobs done?
            while proc.poll() is None:
                rss = current_rss(proc.pid)
                if rss is not None:
                    series.setdefault(n, []).append((time.perf_counter() - started, rss))
                time.sleep(0.25)
            if proc.returncode != 0:
                raise SystemExit(f"corral failed on {n} piped jobs")
            elapsed = time.perf_counter() - started
            gen.stdout.close()
            gen.wait()
            with open(stats) as f:
                data = json.load(f)
            assert data["ok"] == n, data
            samples[n].append((data["peak_rss_bytes"], elapsed))
            log(
                f"   {n:,} jobs: peak RSS {data['peak_rss_bytes'] / 2**20:.1f} MiB in {elapsed:.1f} s"
            )
    peaks = {
        n: (
            statistics.median(p for p, _ in runs_),
            statistics.median(t for _, t in runs_),
            [p for p, _ in runs_],
        )
        for n, runs_ in samples.items()
    }
    return peaks, series.get(10_000_000, [])


def current_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_log_time(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scenario_recovery_latency(kills):
    log(f"== recovery: {kills} SIGKILLs, time to the replacement's hello")
    jobs = generate(os.path.join(WORK, "spin-20000.jsonl"), "spin", "20000", "2")
    err_path = os.path.join(WORK, "recovery.log")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                CORRAL,
                "run",
                "-j",
                "2",
                "-v",
                "--log-format",
                "json",
                "--retries",
                "1000",
                "--max-restarts",
                "100000",
                jobs,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    rng = random.Random(7)
    kill_times = []
    try:
        deadline = time.time() + 20
        while len(children_of(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.01)
        for _ in range(kills):
            # Look for the workers only after the replacement had ample time: polling /proc
            # would compete for the CPU with the very start-up being measured.
            time.sleep(0.05)
            workers = children_of(proc.pid)
            while len(workers) < 2 and proc.poll() is None:
                time.sleep(0.02)
                workers = children_of(proc.pid)
            victim = rng.choice(workers)
            kill_times.append(time.time())
            os.kill(victim, signal.SIGKILL)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait()
    starts = []
    with open(err_path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("fields", {}).get("message") == "worker started":
                starts.append(parse_log_time(record["timestamp"]))
    starts.sort()
    latencies = []
    for t in kill_times:
        after = [s for s in starts if s >= t]
        if after:
            latencies.append(after[0] - t)
    assert len(latencies) >= kills * 0.95, (
        f"only {len(latencies)} replacements seen for {kills} kills"
    )
    return statistics.median(latencies), latencies


def scenario_kill_storm(runs):
    """Storm runs, each after a calm run of the same command: medians of both, and the kills."""
    log("== recovery: tiny jobs with a worker SIGKILLed every 100 ms, each after a calm run")
    jobs = os.path.join(WORK, "tiny-1m.jsonl")
    out = os.path.join(WORK, "storm.out")
    calm_times, times, kill_counts = [], [], []
    for r in range(runs):
        # The calm run it is compared with comes right before it: the machine's speed drifts.
        calm_times.append(
            run_timed([CORRAL, "run", "-j", "2", "-q", "--retries", "100", jobs], stdout_path=out)
        )
        proc = subprocess.Popen(
            [CORRAL, "run", "-j", "2", "-q", "--retries", "100", jobs],
            stdout=open(out, "wb"),
            stderr=subprocess.PIPE,
        )
        started = time.perf_counter()
        kills = 0
        rng = random.Random(r)
        next_kill = started + 0.1
        # Polled every few milliseconds, so that the end of the run is seen when it happens and
        # not at the next kill (the calm run it is compared with takes about half a second).
        while proc.poll() is None:
            now = time.perf_counter()
            if now < next_kill:
                time.sleep(min(0.005, next_kill - now))
                continue
            next_kill += 0.1
            workers = children_of(proc.pid)
            if workers and proc.poll() is None:
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"kill-storm run failed: {proc.stderr.read().decode()[-2000:]}")
        assert count_lines(out) == 1_000_000
        times.append(elapsed)
        kill_counts.append(kills)
        log(
            f"   round {r + 1}: calm {calm_times[-1]:.2f}s, storm {elapsed:.2f}s with {kills} kills"
        )
    outputs_by_id(out)  # exactly once, all ok
    return statistics.median(calm_times), statistics.median(times), kill_counts


def rss_over_time(series):
    """A sentence on how resident memory moved during the 10M runs, by stretch of the run."""
    if not series:
        return ""
    # The first half second is start-up (the process image is still loading).
    series = [(t, rss) for t, rss in series if t >= 0.5]
    if not series:
        return ""
    start, end = min(t for t, _ in series), max(t for t, _ in series)
    span = (end - start) / 3
    thirds = [
        [rss for t, rss in series if start + k * span <= t <= start + (k + 1) * span]
        for k in range(3)
    ]
    parts = [f"{min(x) / 2**20:.1f}-{max(x) / 2**20:.1f} MiB" for x in thirds if x]
    return (
        "Resident memory sampled every 250 ms during the 10M runs (after the first half second), by third of the run: "
        + ", then ".join(parts)
        + ". The resident set stays in one band however many jobs are done: the input blocks and job vectors"
        " come from fixed rings, reused in turn, so what varies from moment to moment is only the results and"
        " messages of the batches in flight."
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs of each fast contender (median taken)"
    )
    parser.add_argument("--py-runs", type=int, default=3, help="runs of each Python contender")
    parser.add_argument(
        "--pool-runs", type=int, default=5, help="rounds of the Python pools (pools.py)"
    )
    parser.add_argument("--kills", type=int, default=200, help="kills for the recovery latency")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    started = time.time()
    parallel = gnu_parallel()
    tiny, tiny_cpu = scenario_tiny(args.runs, args.py_runs, parallel)
    per_job = scenario_per_job_parallel(parallel, 2) if parallel else None
    cpu = scenario_cpu(max(3, args.runs - 2))
    memory, rss_series = scenario_memory(MEMORY_RUNS)
    latency, latencies = scenario_recovery_latency(args.kills)
    storm_calm, storm, storm_kills = scenario_kill_storm(5)
    import workers  # imported here: it imports this module's helpers

    python = workers.scenario_python(args.py_runs)
    python_kill = workers.scenario_python_kill(python, workers.best_chunk(python))
    commands = workers.scenario_commands(args.runs, parallel)
    worker_rows, worker_lines = workers.report(
        python, python_kill, commands, args.py_runs, args.runs
    )
    import pool_failures
    import pools  # imported here, as workers is

    pool_best = pools.measure(args.pool_runs, log=log)
    failures = pool_failures.table(pools.python(), pools.environment(), log=log)
    pool_rows, pool_lines = pools.report(pool_best, failures, args.pool_runs)
    import pool_calls  # imported here, as pools is

    call_runs = max(7, args.pool_runs)
    call_rows, call_lines = pool_calls.report(pool_calls.measure(call_runs, log=log), call_runs)
    import service  # imported here, as workers is

    service_runs = max(3, args.runs - 2)
    service_rows, service_lines = service.report(
        service.measure(service_runs, log=log), service_runs
    )
    import threads  # imported here, as workers is

    thread_lines = threads.report(threads.measure(3, log=log), 3)
    import shards  # imported here, as workers is

    shard_runs = max(3, args.runs - 2)
    shard_rows, shard_lines = shards.report(shards.measure(shard_runs), shard_runs)

    import datapath  # imported here, as workers is

    path_rows, path_lines = datapath.report(datapath.measure(args.runs), args.runs)
    total = time.time() - started

    corral = tiny["corral -j 2"]
    python_best_name = min((k for k in tiny if k.startswith("Python")), key=lambda k: tiny[k])
    python_best = tiny[python_best_name]
    floor = tiny["single-process baseline"]
    # The serial time is the faster of the single-process run and corral with one worker, so
    # that a slow baseline cannot flatter the parallel efficiency.
    serial = min(cpu["serial (single process)"], cpu["corral -j 1"])
    efficiency = serial / (2 * cpu["corral -j 2"])
    peak_1m, peak_10m = memory[1_000_000][0], memory[10_000_000][0]
    storm_ratio = storm_calm / storm
    corral_cpu, floor_cpu = tiny_cpu["corral -j 2"], tiny_cpu["single-process baseline"]
    # The shortest wall time corral's CPU time allows: every CPU busy from start to end.
    best_possible = corral_cpu / usable

    def verdict(ok):
        return "met" if ok else "**not met**"

    rows = [
        (
            "Tiny: corral vs Python's best",
            f"{python_best / corral:.1f}x faster",
            ">= 20x",
            verdict(python_best / corral >= 20),
        ),
        (
            "Tiny: corral vs single-process baseline",
            f"{floor / corral:.2f}x",
            ">= 1.0x",
            verdict(floor / corral >= 1.0),
        ),
        *(
            [
                (
                    "Tiny: corral vs GNU parallel --pipepart",
                    f"{tiny[k] / corral:.2f}x faster",
                    "(none set)",
                    "",
                )
                for k in tiny
                if k.startswith("GNU parallel")
            ]
        ),
        (
            "CPU-bound: parallel efficiency, 2 workers",
            f"{efficiency * 100:.1f}%",
            ">= 95%",
            verdict(efficiency >= 0.95),
        ),
        (
            "Memory: supervisor peak RSS, 1M jobs",
            f"{peak_1m / 2**20:.1f} MiB",
            "<= 64 MiB",
            verdict(peak_1m <= 64 * 2**20),
        ),
        (
            "Memory: supervisor peak RSS, 10M jobs",
            f"{peak_10m / 2**20:.1f} MiB ({(peak_10m / peak_1m - 1) * 100:+.1f}% vs 1M)",
            "<= 64 MiB, within 10% of 1M",
            verdict(peak_10m <= 64 * 2**20 and peak_10m <= 1.1 * peak_1m),
        ),
        (
            "Recovery: death to replacement hello, median",
            f"{latency * 1000:.2f} ms",
            "<= 5 ms",
            verdict(latency <= 0.005),
        ),
        (
            "Recovery: throughput under a kill every 100 ms",
            f"{storm_ratio * 100:.0f}% of calm",
            ">= 80%",
            verdict(storm_ratio >= 0.8),
        ),
        *worker_rows,
        *pool_rows,
        *call_rows,
        *service_rows,
        *shard_rows,
        *path_rows,
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{cpus} CPUs ({usable} usable), Linux {platform.release()}; the suite took {total / 60:.1f} minutes.",
        "This machine is shared and noisy: compare ratios, which come from runs interleaved in the same",
        "session, rather than absolute times.",
        "",
        "Reproduce with `scripts/bench/run` (it builds the release binaries, generates the job files",
        "deterministically under `target/bench/`, and rewrites this file).",
        "",
        "## Targets",
        "",
        "| what | measured | target | |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "## Tiny jobs: 1,000,000 `sum_squares` jobs of 8 integers, JSONL in, JSONL out",
        "",
        f"Medians of {args.runs} runs (Python: {args.py_runs}). Every contender's output was checked to hold",
        "the same output for every id, exactly once.",
        "",
        "| contender | median wall time | jobs/s | corral is |",
        "| --- | --- | --- | --- |",
        *[
            f"| {name} | {fmt_s(t)} | {1_000_000 / t:,.0f} | {t / corral:.2f}x faster |"
            if name != "corral -j 2"
            else f"| {name} | {fmt_s(t)} | {1_000_000 / t:,.0f} | |"
            for name, t in tiny.items()
        ],
        "",
        f"Where the ratio to Python comes from: corral/Python = (Python's best / baseline) x "
        f"(baseline / corral) = {python_best / floor:.1f} x {floor / corral:.2f}. Per run (medians), corral used "
        f"{corral_cpu:.2f} s of CPU, its workers included, against the baseline's {floor_cpu:.2f} s "
        f"({(corral_cpu / floor_cpu - 1) * 100:+.0f}%: the same parsing, task and formatting code, plus the "
        f"hand-offs between processes and threads). Even if the {usable} CPUs were busy from start to end, that "
        f"CPU time needs {best_possible:.3f} s of wall time: at best {python_best / best_possible:.1f}x Python's "
        f"best in this run, where 20x would need {python_best / 20:.3f} s.",
        "",
        *(
            [
                f"GNU parallel running one process per job (`parallel --pipe -N1 -j 2`, the baseline on each "
                f"line), as it is mostly used, took a median of {fmt_s(per_job)} for the first 1,000 of these jobs "
                f"(2 runs): {1000 / per_job:,.0f} jobs/s, {per_job / 1000 * 1_000_000 / corral:,.0f}x slower than corral. "
                "With `--pipepart` (table above) it cuts the file into parts for two copies of the baseline, which "
                "only works for a file on disk, keeps no job apart from another, and retries nothing.",
                "",
            ]
            if per_job
            else []
        ),
        "## CPU-bound: 400 `spin` jobs, each burning 25 ms of its thread's CPU time",
        "",
        "| contender | median wall time | |",
        "| --- | --- | --- |",
        f"| serial (single process) | {fmt_s(cpu['serial (single process)'])} | {cpu['serial (single process)'] / 400 * 1000:.1f} ms per job |",
        f"| corral -j 1 | {fmt_s(cpu['corral -j 1'])} | {cpu['serial (single process)'] / cpu['corral -j 1'] * 100:.1f}% of the single process's speed |",
        f"| corral -j 2 | {fmt_s(cpu['corral -j 2'])} | parallel efficiency {efficiency * 100:.1f}% |",
        "",
        "Parallel efficiency is serial / (2 x wall of corral -j 2), where serial is the faster of the",
        "single-process run and corral -j 1.",
        "",
        "## Memory: corral's own peak RSS (VmHWM, from `--stats`), jobs streamed from a pipe",
        "",
        f"Medians of {MEMORY_RUNS} runs each. The peak is a high-water mark: it records the largest brief spike of",
        "a run, so a ten times longer run can record a somewhat higher one (see the series below).",
        "",
        "| jobs | median peak RSS | every run | median wall time |",
        "| --- | --- | --- | --- |",
        *[
            f"| {n:,} | {peak / 2**20:.1f} MiB | {', '.join(f'{p / 2**20:.1f}' for p in all_)} MiB | {t:.1f} s |"
            for n, (peak, t, all_) in memory.items()
        ],
        "",
        rss_over_time(rss_series),
        "",
        "## Recovery",
        "",
        f"- SIGKILL of a worker to its replacement's `Hello` (the `worker started` log line), over "
        f"{len(latencies)} kills: median {latency * 1000:.2f} ms, 90th percentile "
        f"{sorted(latencies)[int(len(latencies) * 0.9)] * 1000:.2f} ms (restart budget raised for this test).",
        f"- 1,000,000 tiny jobs with a random worker SIGKILLed every 100 ms: median {fmt_s(storm)} "
        f"({storm_kills} kills per run) against {fmt_s(storm_calm)} for the calm runs interleaved with them: "
        f"{storm_ratio * 100:.0f}% of calm throughput, every result present exactly once.",
        "",
        *worker_lines,
        *pool_lines,
        *call_lines,
        *service_lines,
        *thread_lines,
        *shard_lines,
        *path_lines,
    ]
    with open(args.output, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
