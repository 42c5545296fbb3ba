"""The ``cme-ser`` front door (``cli.main``) as a user starts it: ``python -m cli`` is the
console script, and importing it loads no TensorFlow, TFX or Beam (``cme-ser serve`` is
gunicorn's master, and ``--help`` should not wait for them)."""

import json
import subprocess
import sys

HEAVY = ("tensorflow", "tfx", "apache_beam", "keras", "tensorflow_io")


def test_importing_the_command_line_loads_no_tensorflow():
    probe = (
        "import json, sys\nimport cli.main\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        f"print(json.dumps(sorted(loaded & {set(HEAVY)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_python_m_cli_is_the_cme_ser_command():
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: cme-ser ")
    for command in (
        "embeddings",
        "preprocess",
        "run",
        "serve",
        "predict",
        "evaluate",
        "compile",
        "reproduce",
    ):
        assert command in done.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "cli", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2 and "invalid choice: 'no-such-command'" in wrong.stderr


def test_a_spawned_worker_re_importing_python_m_cli_runs_no_command():
    """``multiprocessing``'s spawn start method imports the parent's main module again as
    ``__mp_main__`` in every worker (``cme-ser reproduce`` starts such a pool): the command
    must run only in the parent. Unguarded, this would parse pytest's argv and exit."""
    import runpy

    namespace = runpy.run_module("cli", run_name="__mp_main__")
    assert callable(namespace["main"])
