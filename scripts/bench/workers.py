"""Benchmarks of workers in other languages and of commands per line, for bench.py.

  5. Python work: 200,000 sum_squares jobs, corral -j 2 with two Python stdio workers on
     corral.worker, against multiprocessing.Pool (spawn, best of chunksizes 64 to 4096) running
     the same function on the same file; then both with one worker SIGKILLed half-way.
  6. Commands: 5,000 jobs of /bin/true and of `sha256sum FILE`, corral --exec against
     xargs -P2, GNU parallel -j2 and rust-parallel -j2.

Run alone with `python3 scripts/bench/workers.py` (after `cargo build --release`): it prints
the markdown it would add to BENCHMARKS.md.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from bench import (
    CORRAL,
    ROOT,
    WORK,
    children_of,
    fmt_s,
    generate,
    gnu_parallel,
    log,
    outputs_by_id,
    run_timed,
)

PY_WORKER = os.path.join(ROOT, "scripts", "bench", "py_worker.py")
POOL = os.path.join(ROOT, "scripts", "bench", "pool.py")
PY_JOBS = 200_000
CHUNKSIZES = (64, 256, 1024, 4096)
COMMAND_JOBS = 5_000
RUST_PARALLEL_ROOT = os.path.join(ROOT, "target", "tools", "rust-parallel")


def corral_python(jobs):
    return [CORRAL, "run", "-q", "-j", "2", "--worker-cmd", f"python3 {PY_WORKER}", jobs]


def pool_cmd(jobs, chunk):
    return [sys.executable, POOL, jobs, "2", str(chunk)]


def scenario_python(runs):
    log(f"== Python work: {PY_JOBS:,} sum_squares, corral's Python workers vs multiprocessing.Pool")
    jobs = generate(os.path.join(WORK, "tiny-200k.jsonl"), "tiny", str(PY_JOBS))
    out = os.path.join(WORK, "python.out")
    times = {"corral -j 2, Python stdio workers": []}
    for chunk in CHUNKSIZES:
        times[f"Pool(2), chunksize {chunk}"] = []
    reference = None
    for r in range(runs):
        for name in times:
            if name.startswith("corral"):
                cmd = corral_python(jobs)
            else:
                cmd = pool_cmd(jobs, int(name.rsplit(" ", 1)[1]))
            times[name].append(run_timed(cmd, stdout_path=out))
            if r == 0:
                outputs = outputs_by_id(out)
                assert len(outputs) == PY_JOBS, f"{name}: {len(outputs)} results"
                if reference is None:
                    reference = outputs
                assert outputs == reference, f"{name} and corral disagree"
        log(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return {name: statistics.median(ts) for name, ts in times.items()}


def python_children(pid):
    """The Python workers among pid's children (corral's, or a Pool's: not its resource
    tracker)."""
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"python" in cmdline and b"resource_tracker" not in cmdline:
                found.append(child)
        except OSError:
            pass
    return found


def run_with_a_kill(cmd, kill_after, out, give_up_after):
    """Runs cmd (in a session of its own), SIGKILLs one of its Python children after
    kill_after seconds, and waits up to give_up_after seconds. Returns (wall time or None if
    it had to be stopped, exit status, result lines written)."""
    with open(out, "wb") as stdout:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(kill_after)
        victims = python_children(proc.pid)
        if victims:
            os.kill(victims[0], signal.SIGKILL)
        try:
            proc.wait(timeout=give_up_after)
            wall = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            wall = None
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    return wall, proc.returncode, lines, bool(victims)


def scenario_python_kill(calm, best_chunk):
    log("== Python work with one worker SIGKILLed half-way")
    jobs = generate(os.path.join(WORK, "tiny-200k.jsonl"), "tiny", str(PY_JOBS))
    out = os.path.join(WORK, "python-kill.out")
    corral_calm = calm["corral -j 2, Python stdio workers"]
    wall, status, lines, killed = run_with_a_kill(
        corral_python(jobs), corral_calm / 2, out, 10 * corral_calm + 30
    )
    assert killed, "no corral worker to kill"
    assert status == 0 and wall is not None, f"corral ended with {status}"
    outputs = outputs_by_id(out)
    assert len(outputs) == PY_JOBS, f"corral wrote {len(outputs)} of {PY_JOBS} results"
    corral_row = (wall, status, lines)
    pool_calm = calm[f"Pool(2), chunksize {best_chunk}"]
    give_up = 5 * pool_calm + 10
    pool_row = run_with_a_kill(pool_cmd(jobs, best_chunk), pool_calm / 2, out, give_up)[:3]
    log(f"   corral: {corral_row}; Pool: {pool_row}")
    return corral_row, pool_row, give_up


def rust_parallel():
    """The path of rust-parallel, installed from crates.io under target/tools on first use."""
    path = os.path.join(RUST_PARALLEL_ROOT, "bin", "rust-parallel")
    if not os.path.exists(path):
        log("   installing rust-parallel from crates.io (cargo install)")
        subprocess.run(
            [
                "cargo",
                "install",
                "--quiet",
                "--locked",
                "rust-parallel",
                "--root",
                RUST_PARALLEL_ROOT,
            ],
            check=False,
        )
    return path if os.path.exists(path) else None


def command_files():
    """COMMAND_JOBS files of 16 KiB of fixed pseudo-random bytes, and a list of their paths."""
    directory = os.path.join(WORK, "files")
    listing = os.path.join(WORK, "files.txt")
    if not os.path.exists(listing):
        os.makedirs(directory, exist_ok=True)
        state = 12345
        paths = []
        for i in range(COMMAND_JOBS):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
            path = os.path.join(directory, f"f{i:05}.bin")
            with open(path, "wb") as f:
                f.write(state.to_bytes(8, "little") * 2048)
            paths.append(path)
        with open(listing, "w") as f:
            f.write("\n".join(paths) + "\n")
    return listing


def scenario_commands(runs, parallel):
    log(f"== commands: {COMMAND_JOBS:,} jobs of /bin/true and of sha256sum FILE")
    numbers = os.path.join(WORK, "numbers.txt")
    with open(numbers, "w") as f:
        f.write("\n".join(str(i) for i in range(1, COMMAND_JOBS + 1)) + "\n")
    files = command_files()
    rust = rust_parallel()
    workloads = {"/bin/true": (numbers, ["/bin/true"]), "sha256sum FILE": (files, ["sha256sum"])}
    out = os.path.join(WORK, "commands.out")
    medians = {}
    for workload, (inputs, command) in workloads.items():
        contenders = {
            "corral --exec -j 2": [CORRAL, "run", "-q", "-j", "2", "--lines", "--exec", *command],
            "xargs -P2 -n1": ["xargs", "-P2", "-n1", *command],
        }
        if parallel:
            contenders["GNU parallel -j2"] = [parallel, "--will-cite", "-j2", *command]
        if rust:
            contenders["rust-parallel -j2"] = [rust, "-j2", *command]
        times = {name: [] for name in contenders}
        for r in range(runs):
            for name, cmd in contenders.items():
                times[name].append(run_timed(cmd, stdin_path=inputs, stdout_path=out))
                if r == 0:
                    check_commands(name, out, workload)
            log(
                f"   {workload} round {r + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            )
        medians[workload] = {name: statistics.median(ts) for name, ts in times.items()}
    return medians


def check_commands(name, out, workload):
    """Every job ran once: 5,000 ok results from corral; 5,000 digests from the others."""
    with open(out) as f:
        lines = f.read().splitlines()
    if name.startswith("corral"):
        results = [json.loads(line) for line in lines]
        assert len(results) == COMMAND_JOBS, f"{name}: {len(results)} results"
        assert all(r["ok"] for r in results), f"{name}: a job failed"
        if workload.startswith("sha256sum"):
            digests = {r["output"]["stdout"] for r in results}
            assert len(digests) == COMMAND_JOBS, f"{name}: {len(digests)} distinct outputs"
    elif workload.startswith("sha256sum"):
        assert len(set(lines)) == COMMAND_JOBS, f"{name}: {len(set(lines))} distinct lines"


def best_chunk(python):
    """The chunksize of the fastest Pool."""
    return int(min((k for k in python if k.startswith("Pool")), key=python.get).split()[-1])


def report(python, kill, commands, py_runs, cmd_runs):
    """Target rows and markdown sections for BENCHMARKS.md."""
    corral = python["corral -j 2, Python stdio workers"]
    pools = {k: v for k, v in python.items() if k.startswith("Pool")}
    best_name = min(pools, key=pools.get)
    best = pools[best_name]
    (c_wall, c_status, c_lines), (p_wall, p_status, p_lines), give_up = kill

    def verdict(ok):
        return "met" if ok else "**not met**"

    rows = [
        (
            "Python work: corral's Python workers vs best Pool",
            f"{best / corral:.2f}x",
            ">= 1.0x",
            verdict(best / corral >= 1.0),
        ),
        (
            "Python work, a worker SIGKILLed half-way",
            f"corral: all {c_lines:,} results; Pool: "
            + (
                f"{p_lines:,} results, hung until stopped at {give_up:.0f} s"
                if p_wall is None
                else f"{p_lines:,} results, status {p_status}"
            ),
            "corral completes every job",
            verdict(c_lines == PY_JOBS and c_status == 0),
        ),
    ]
    targets = {"xargs -P2 -n1": 1.0, "GNU parallel -j2": 5.0, "rust-parallel -j2": 1.0}
    for workload, medians in commands.items():
        ours = medians["corral --exec -j 2"]
        for name, target in targets.items():
            if name in medians:
                ratio = medians[name] / ours
                rows.append(
                    (
                        f"Commands, {workload}: corral vs {name}",
                        f"{ratio:.2f}x",
                        f">= {target:.1f}x",
                        verdict(ratio >= target),
                    )
                )
    pool_outcome = (
        f"had written {p_lines:,} of {PY_JOBS:,} results and was still waiting when it was "
        f"stopped after {give_up:.0f} s (Pool replaces a dead worker, but the chunk it held is "
        "lost and imap waits for it forever)"
        if p_wall is None
        else f"ended with status {p_status} after {fmt_s(p_wall)}, with {p_lines:,} results"
    )
    lines = [
        f"## Python work: {PY_JOBS:,} `sum_squares` jobs, Python workers",
        "",
        f"The same JSONL file and the same function: corral -j 2 with two Python workers on "
        "`python/corral/worker.py` (`scripts/bench/py_worker.py`), against `multiprocessing.Pool(2)` "
        "with the spawn start method, imap over the file's lines (`scripts/bench/pool.py`). Medians "
        f"of {py_runs} interleaved runs; every contender's output was checked to hold the same output "
        "for every id, exactly once.",
        "",
        "| contender | median wall time | jobs/s | corral is |",
        "| --- | --- | --- | --- |",
        *[
            f"| {name} | {fmt_s(t)} | {PY_JOBS / t:,.0f} | "
            + ("|" if name.startswith("corral") else f"{t / corral:.2f}x faster |")
            for name, t in python.items()
        ],
        "",
        f"With one worker SIGKILLed half-way: corral finished in {fmt_s(c_wall)} (status "
        f"{c_status}) with every one of the {PY_JOBS:,} results, each once; the Pool ({best_name}) "
        f"{pool_outcome}.",
        "",
        f"## Commands: {COMMAND_JOBS:,} jobs per line of input",
        "",
        "`corral run --lines --exec CMD` against `xargs -P2 -n1 CMD`, GNU parallel `-j2 CMD` and "
        "rust-parallel `-j2 CMD` (from crates.io), each appending the line to the command. corral "
        "also captures every command's exit status, stdout and stderr into a result line; xargs, "
        f"GNU parallel and rust-parallel pass the output through. Medians of {cmd_runs} interleaved "
        "runs. `sha256sum FILE` hashes a different 16 KiB file per job.",
        "",
        "| workload | contender | median wall time | jobs/s | corral is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for workload, medians in commands.items():
        ours = medians["corral --exec -j 2"]
        for name, t in medians.items():
            mark = "" if name.startswith("corral") else f"{t / ours:.2f}x faster"
            lines.append(f"| {workload} | {name} | {fmt_s(t)} | {COMMAND_JOBS / t:,.0f} | {mark} |")
    lines.append("")
    return rows, lines


def main():
    os.makedirs(WORK, exist_ok=True)
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    python = scenario_python(runs)
    kill = scenario_python_kill(python, best_chunk(python))
    commands = scenario_commands(runs, gnu_parallel())
    rows, lines = report(python, kill, commands, runs, runs)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
