"""Before and after a restructuring of the supervisor: corral at a git revision (built in a
worktree under target/bench/) against this checkout, side by side and interleaved, on the data
path, memory, the pools and the threads. Alone:

    python3 scripts/bench/layers.py --before REV [--runs N]

(after cargo build --release). It rewrites only the "Before and after" section of BENCHMARKS.md.

Each round runs, for each side in turn: 1,000,000 tiny `sum_squares` jobs from a file with
`corral run -j 2` (the data path); the same number piped in, for the supervisor's peak RSS
(memory); 200,000 tiny jobs through `corral.Pool(2).imap`, chunksize 4096, and through Python
stdio workers under `corral run -j 2` (the pools); then, once per side, the threads and fds of
`corral run -j 2, 64, 256` mid-run and the start-up of the workers (scripts/bench/threads.py).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import threads
from bench import BIN, CORRAL, ROOT, TOOL, WORK, generate, log, run_timed
from datapath import build_before, splice

HEADING = "## Before and after"
JOBS = 1_000_000
PY_JOBS = 200_000
HERE = os.path.dirname(os.path.abspath(__file__))


def datapath(corral, worker, jobs):
    return run_timed([corral, "run", "-q", "-j", "2", "--worker", worker, jobs])


def memory(corral, worker):
    """Peak RSS in bytes of `corral run -j 2` on JOBS tiny jobs piped in."""
    stats = os.path.join(WORK, "layers-stats.json")
    gen = subprocess.Popen([TOOL, "gen", "tiny", str(JOBS)], stdout=subprocess.PIPE)
    run = subprocess.run(
        [corral, "run", "-q", "-j", "2", "--worker", worker, "--stats", stats],
        stdin=gen.stdout,
        stdout=subprocess.DEVNULL,
    )
    gen.stdout.close()
    gen.wait()
    if run.returncode != 0:
        raise SystemExit(f"{corral} failed on piped jobs")
    with open(stats) as f:
        data = json.load(f)
    assert data["ok"] == JOBS, data
    return data["peak_rss_bytes"]


def python_pool(corral):
    """Seconds of corral.Pool(2).imap over PY_JOBS tiny jobs, with `corral` as its binary."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), HERE])
    env["CORRAL_BIN"] = corral
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "pools.py"), "--one", "corral.Pool", "tiny", "4096"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def stdio_workers(corral, jobs):
    worker = f"{sys.executable} {os.path.join(HERE, 'py_worker.py')}"
    return run_timed([corral, "run", "-q", "-j", "2", "--worker-cmd", worker, jobs])


def measure(rev, runs):
    os.makedirs(WORK, exist_ok=True)
    jobs = generate(os.path.join(WORK, "tiny-1m.jsonl"), "tiny", str(JOBS))
    py_jobs = generate(os.path.join(WORK, "tiny-200k.jsonl"), "tiny", str(PY_JOBS))
    sides = {"before": build_before(rev), "after": (CORRAL, os.path.join(BIN, "corral-worker"))}
    found = {side: {"datapath": [], "memory": [], "pool": [], "stdio": []} for side in sides}
    for r in range(runs):
        # Alternate which side goes first, so that neither always runs on a warmer machine.
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            corral, worker = sides[side]
            found[side]["datapath"].append(datapath(corral, worker, jobs))
            found[side]["memory"].append(memory(corral, worker))
            found[side]["pool"].append(python_pool(corral))
            found[side]["stdio"].append(stdio_workers(corral, py_jobs))
        log(
            f"   round {r + 1}: "
            + "; ".join(
                f"{side} {found[side]['datapath'][-1]:.3f} s, "
                f"{found[side]['memory'][-1] / 2**20:.1f} MiB, "
                f"pool {found[side]['pool'][-1]:.3f} s, stdio {found[side]['stdio'][-1]:.3f} s"
                for side in sides
            )
        )
    counted = {}
    for side in sides:
        corral = sides[side][0]
        counted[side] = {w: threads.one_run(w, corral) for w in threads.WORKERS}
        log(f"   threads of {side}: {counted[side]}")
    return found, counted


def commit_of(rev):
    return subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


def report(rev, runs, found, counted):
    med = {side: {k: statistics.median(v) for k, v in m.items()} for side, m in found.items()}
    after_commit = commit_of("HEAD")
    dirty = subprocess.run(
        ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    after_name = after_commit + (" + changes" if dirty else "")
    stamp = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        HEADING,
        "",
        f"corral at {commit_of(rev)} (before) and at {after_name} (after), measured "
        f"{stamp:%Y-%m-%d %H:%M} UTC, interleaved, medians of {runs} rounds: "
        f"`python3 scripts/bench/layers.py --before {rev} --runs {runs}`. A ratio is after "
        "over before: under 1 is faster or smaller.",
        "",
        "| what | before | after | after / before |",
        "| --- | --- | --- | --- |",
    ]
    rows = [
        ("1,000,000 tiny jobs, `corral run -j 2` (data path)", "datapath", "s"),
        ("supervisor peak RSS, 1,000,000 tiny jobs piped in (memory)", "memory", "MiB"),
        ("200,000 tiny, `corral.Pool(2).imap`, chunksize 4096 (pool)", "pool", "s"),
        ("200,000 tiny, Python stdio workers, `corral run -j 2` (pool)", "stdio", "s"),
    ]
    for label, key, unit in rows:
        before, after = med["before"][key], med["after"][key]
        if unit == "MiB":
            shown = (f"{before / 2**20:.1f} MiB", f"{after / 2**20:.1f} MiB")
        else:
            shown = (f"{before:.3f} s", f"{after:.3f} s")
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | {after / before:.3f} |")
    lines += [
        "",
        "Threads and fds of the corral process mid-run (every worker holding a job), and the time "
        "from launch to the last worker's hello, one run of each side:",
        "",
        "| run | threads before | threads after | fds before | fds after "
        "| start-up before | start-up after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in threads.WORKERS:
        (sb, tb, fb), (sa, ta, fa) = counted["before"][w], counted["after"][w]
        lines.append(
            f"| -j {w} | {tb} | {ta} | {fb} | {fa} | {sb * 1000:.0f} ms | {sa * 1000:.0f} ms |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", metavar="REV", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    found, counted = measure(args.before, args.runs)
    section = report(args.before, args.runs, found, counted)
    print("\n".join(section))
    splice(args.output, section, HEADING)


if __name__ == "__main__":
    main()
