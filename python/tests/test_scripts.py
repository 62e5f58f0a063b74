"""corral.Pool wherever Python runs: a script, `python -m`, `python -c`, a script on stdin;
the worker sees what a spawn child sees; a worker that cannot start raises its own exception in
the call; a script without the __main__ guard fails at once, as under spawn."""

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))
PREAMBLE = f"import sys\nsys.path.insert(0, {TESTS!r})\n"


def python(args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def script(tmp_path, body, name="script.py"):
    path = tmp_path / name
    path.write_text(PREAMBLE + textwrap.dedent(body))
    return path


def test_a_script_on_stdin_uses_the_pool():
    body = PREAMBLE + textwrap.dedent(
        """
        import corral, pool_tasks
        with corral.Pool(2) as pool:
            print(pool.map(pool_tasks.square, range(5)))
        """
    )
    done = python(["-"], stdin=body)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16]"


def test_python_dash_c_uses_the_pool_and_refuses_its_own_functions_clearly():
    done = python(
        [
            "-c",
            PREAMBLE + "import corral, pool_tasks\n"
            "def mine(x): return x\n"
            "with corral.Pool(1) as pool:\n"
            "    print(pool.map(pool_tasks.square, [3]))\n"
            "    try:\n"
            "        pool.map(mine, [1])\n"
            "    except ValueError as e:\n"
            "        print('refused:', e)\n",
        ]
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[9]"
    assert "workers cannot run again" in lines[1] and "-c" in lines[1]


def test_functions_of_a_script_s_main_and_of_python_dash_m(tmp_path):
    body = """
        import corral

        def cube(x):
            return x ** 3

        if __name__ == "__main__":
            with corral.Pool(2) as pool:
                print(pool.map(cube, range(4)))
        """
    path = script(tmp_path, body, "cubes.py")
    done = python([str(path)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 8, 27]"
    done = python(["-m", "cubes"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 8, 27]"


def test_a_worker_sees_the_parent_s_argv_path_and_directory(tmp_path):
    body = """
        import os, sys
        import corral
        NAME = sys.argv[1]  # read at the top level, as scripts do

        def where(_):
            return [NAME, os.getcwd(), sys.argv[1:], sys.path[0]]

        if __name__ == "__main__":
            with corral.Pool(1) as pool:
                print(pool.apply(where, (0,)))
        """
    path = script(tmp_path, body)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = python([str(path), "first", "second"], cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["first", str(elsewhere), ["first", "second"], TESTS])


def test_a_script_without_the_main_guard_fails_at_once_as_under_spawn(tmp_path):
    body = """
        import corral, pool_tasks
        print("side effect", flush=True)
        with corral.Pool(2) as pool:
            print(pool.map(pool_tasks.square, range(3)))
        """
    done = python([str(script(tmp_path, body))])
    assert done.returncode != 0
    assert "An attempt has been made to start a new process before the" in done.stderr
    assert done.stderr.rstrip().endswith(
        "section in https://docs.python.org/3/library/multiprocessing.html"
    )
    # As under spawn, a worker runs the body up to the pool it may not make, then fails; corral
    # stops after three such starts in a row instead of starting workers forever.
    assert 1 <= done.stdout.count("side effect") <= 1 + 2 * 3
    assert "[0, 1, 4]" not in done.stdout


def test_a_raising_initializer_is_raised_in_the_call_with_its_traceback(tmp_path):
    body = """
        import corral, pool_tasks
        if __name__ == "__main__":
            with corral.Pool(2, initializer=pool_tasks.init_fails) as pool:
                try:
                    pool.map(pool_tasks.square, range(3))
                except ValueError as e:
                    print("raised:", repr(e))
                    print("cause:", type(e.__cause__).__name__, "init_fails" in str(e.__cause__))
        """
    done = python([str(script(tmp_path, body))])
    assert done.returncode == 0, done.stderr
    assert "raised: ValueError('no model here')" in done.stdout
    assert "cause: RemoteTraceback True" in done.stdout


def test_a_module_that_fails_to_import_in_the_worker_is_raised_in_the_call(tmp_path):
    (tmp_path / "fragile.py").write_text(
        "import os\n"
        "if os.environ.get('CORRAL_POOL_DIR'):\n"
        "    raise ImportError('fragile cannot load in a worker')\n"
        "def f(x):\n"
        "    return x\n"
    )
    body = f"""
        sys.path.insert(0, {str(tmp_path)!r})
        import corral, fragile
        if __name__ == "__main__":
            with corral.Pool(1) as pool:
                try:
                    pool.map(fragile.f, [1])
                except ImportError as e:
                    print("raised:", e)
        """
    done = python([str(script(tmp_path, body))])
    assert done.returncode == 0, done.stderr
    assert "raised: fragile cannot load in a worker" in done.stdout
