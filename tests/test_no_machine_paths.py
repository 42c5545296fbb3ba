"""No code, test or benchmark names a path of one machine (issue 24): data is found by the
project's lookup ($CME_SER_DATA, ./data, ../shared/data), scratch space by ``tempfile`` and
pytest's ``tmp_path``. Read with ``ast``: every string literal of every project file."""

import ast
import re
import subprocess
from pathlib import Path

from imports_support import ROOT

# A home, a workspace, a mount or the scratch space of some machine, where a path starts (not
# inside a URL or after a variable prefix); OS interfaces (/dev/null, /proc/self/...) are the
# same everywhere and allowed.
MACHINE_PATH = re.compile(
    r"(?:^|(?<=[\s\"'=(]))/(work|home|root|Users|mnt|media|srv|opt|tmp"
    r"|scratch)/[\w.-]"
)


def tracked_python_files():
    out = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / path for path in out]


def test_no_string_literal_is_a_machine_path():
    found = []
    files = tracked_python_files()
    assert len(files) > 100
    for path in files:
        if path.name == Path(__file__).name:
            continue  # its own examples of what it looks for
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in MACHINE_PATH.finditer(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {match.group(0)}")
    assert not found, "\n".join(found)


def test_the_pattern_finds_what_it_should():
    assert MACHINE_PATH.search('RAVDESS = Path("/work/shared/data/ravdess-speech")')
    assert MACHINE_PATH.search("/home/me/corpus")
    assert MACHINE_PATH.search("/tmp/small4-out")
    assert not MACHINE_PATH.search("/dev/null") and not MACHINE_PATH.search("/proc/self/task")
    assert not MACHINE_PATH.search("gs://bucket/data/x") and not MACHINE_PATH.search("a/tmp/b")
    assert not MACHINE_PATH.search("/v1/models/cme") and not MACHINE_PATH.search("/data/runs")
    assert MACHINE_PATH.search("python x.py /tmp/shipped/cme/1")
