"""The commands of README.md, as the tests see them (a support module: no tests here; used by
``tests/test_readme.py`` and ``tests/test_readme_runs.py``).

Every command in a ```sh block of README.md is either run by a test, as written (placeholders
and sizes scaled down), or marked in README.md as not runnable here; ``test_readme.py`` fails
for any other.

**Extraction** (:func:`commands`). A ```sh block is read as shell, with two synopsis
conventions on top: a line ending in ``\\`` continues on the next line, and so does an
*indented* line (``    [--ensemble N]`` continues the ``cme-ser run`` synopsis above it). A
``#`` that starts a word outside quotes begins a comment; comments are dropped (a ``#`` inside
quotes is kept), and a quoted string may span lines (the ``python -c '...'`` snippet is one
command). A command is identified by its *key*, its leading words (:func:`command_key`):
``cme-ser serve``, ``cme-ser embeddings fetch``, ``tfx run create``, ``tensorboard``,
``python benchmarks/serving_load.py``, ``python -m apache_beam.runners...``, ``python -c``,
``curl -s localhost:8501/v1/models/cme``, ``docker run``, ``make test``; leading ``VAR=value``
assignments are not part of it.

**Marks.** A command that cannot run on this machine carries, on one of its own lines in
README.md, a trailing comment ``# not run here: <reason>``; e.g.::

    docker run ... tensorflow/serving  # not run here: no Docker engine

It is visible in the README and the reason is the skip message of the command's coverage test.
Only marked commands are skipped.

**Coverage** (:data:`COVERAGE`). Each unmarked command is covered by the tests listed for the
first selector that matches it: a selector is a key (``"cme-ser preprocess"``), optionally
followed by `` ... `` and text the command must contain (``"cme-ser preprocess ...
--runner=PortableRunner"``); selectors with text are tried first. A test is
``"tests/<file>.py::<function>"`` (a test, or the fixture or helper that runs the command);
it must exist and its source must contain the command's leading words, spelt as the README
writes them (``cme-ser serve``) or as an argv list (``"serve"``, ``"pipeline", "create"``), or
one of the ``evidence`` strings of its entry; each evidence string must be in one of the tests.
Every entry must match a README command. Tests in ``test_readme*.py`` run the README's own
text, found with :func:`find`, through :func:`concrete_argv`.

**Options** (:func:`options`, :func:`concrete_argv`, :func:`script_options`): what a synopsis
shows (``[optional]`` parts, ``a|b`` and ``{a,b}`` values, ``--x X | --y Y`` choices,
placeholders in capitals, ``...``), for ``test_readme.py`` to check every option and value
against ``cli.main.build_parser()`` or the benchmark script's ``add_argument`` calls.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"not run here:\s*(?P<reason>.+?)\s*$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # DIR, PATH, N, URL, IMG, AUDIO, ...
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclasses.dataclass(frozen=True)
class Command:
    text: str  # continuation lines joined with a space, comments dropped
    line: int  # README line of its first line (1-based)
    comments: Tuple[str, ...]  # its comments, without "#"

    @property
    def words(self) -> List[str]:
        """Shell words (quotes removed), without leading VAR=value assignments."""
        words = shlex.split(self.text)
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        return words

    @property
    def key(self) -> str:
        return command_key(self.words)

    @property
    def not_run_reason(self) -> Optional[str]:
        for comment in self.comments:
            match = MARK.search(comment)
            if match:
                return match.group("reason")
        return None

    def __str__(self) -> str:
        text = self.text if len(self.text) < 100 else self.text[:97] + "..."
        return f"README.md:{self.line}: {text}"


# ----------------------------------------------------------------------------------------------
# Extraction


def fenced_blocks(text: str, lang: str) -> List[Tuple[int, List[str]]]:
    """``(line of the first content line, lines)`` of every ```lang block (lang "" for a plain
    ``` block)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```") and stripped[3:].strip() == lang:
                current, start = [], number + 1
            elif stripped.startswith("```") and stripped[3:].strip():
                current, start = False, 0  # another language's block: skip to its end
        elif stripped == "```":
            if current is not False:
                blocks.append((start, current))
            current = None
        elif current is not False:
            current.append(line)
    return blocks


def split_comment(line: str, quote: Optional[str]) -> Tuple[str, Optional[str], Optional[str]]:
    """``(code, comment or None, quote still open at the end of the line)``: a ``#`` starting a
    word outside quotes starts the comment; ``quote`` is the quote open at the line's start."""
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                escaped = True
        elif char == "\\":
            escaped = True
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1 :].strip(), None
    return line, None, quote


def commands_in_block(lines: Sequence[str], first_line: int) -> List[Command]:
    out: List[Command] = []
    parts: List[str] = []
    comments: List[str] = []
    start, quote, continued = 0, None, False

    def flush():
        nonlocal parts, comments
        text = "".join(parts).strip()
        if text:
            out.append(Command(text, start, tuple(comments)))
        parts, comments = [], []

    for offset, line in enumerate(lines):
        in_quote = quote is not None
        code, comment, quote = split_comment(line, quote)
        indented = line[:1].isspace()
        if not (in_quote or continued or (indented and parts)):
            flush()
            start = first_line + offset
        if comment is not None:
            comments.append(comment)
        if in_quote:
            parts.append("\n" + code)
            continued = quote is not None or code.rstrip().endswith("\\")
        else:
            stripped = code.rstrip()
            continued = quote is not None or stripped.endswith("\\")
            if stripped.endswith("\\") and quote is None:
                stripped = stripped[:-1].rstrip()
            if stripped.strip():
                if not parts:
                    start = first_line + offset
                parts.append(
                    (" " if parts else "") + (stripped.strip() if quote is None else code.strip())
                )
    flush()
    return out


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def commands(text: Optional[str] = None) -> List[Command]:
    """Every command of README.md's ```sh blocks, in order."""
    text = readme_text() if text is None else text
    out = []
    for start, lines in fenced_blocks(text, "sh"):
        out.extend(commands_in_block(lines, start))
    return out


def command_key(words: Sequence[str]) -> str:
    """The leading words that name a command (see the module docstring)."""
    if not words:
        return ""
    program, rest = words[0], list(words[1:])
    if program in ("python", "python3"):
        if rest[:1] == ["-m"]:
            return " ".join([program] + rest[:2])
        if rest[:1] == ["-c"]:
            return f"{program} -c"
        return " ".join([program] + rest[:1])
    if program == "curl":
        for i, word in enumerate(rest):
            if "localhost" in word or "://" in word:
                return " ".join([program] + rest[: i + 1])
        return program
    key = [program]
    for word in rest:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
            break
        key.append(word)
    return " ".join(key)


def parse_selector(selector: str) -> Tuple[str, str]:
    key, _, text = selector.partition(" ... ")
    return key.strip(), text.strip()


def matches(command: Command, selector: str) -> bool:
    key, text = parse_selector(selector)
    return command.key == key and text in command.text


def find(selector: str, text: Optional[str] = None) -> Command:
    """The one README command that ``selector`` matches (see the module docstring)."""
    found = [c for c in commands(text) if matches(c, selector)]
    assert len(found) == 1, f"{len(found)} README commands match {selector!r}: " + "; ".join(
        map(str, found)
    )
    return found[0]


def plain_block_after(heading: str, text: Optional[str] = None) -> str:
    """The first plain ``` block after the line ``heading``."""
    text = readme_text() if text is None else text
    lines = text.splitlines()
    at = lines.index(heading)
    first = min(start for start, _ in fenced_blocks("\n".join(lines[at:]), ""))
    return "\n".join(dict(fenced_blocks("\n".join(lines[at:]), ""))[first])


def json_sample(text: Optional[str] = None) -> dict:
    """The README's ```json block (there is one: a predict_waveform answer)."""
    text = readme_text() if text is None else text
    [(_, lines)] = fenced_blocks(text, "json")
    return json.loads("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Synopses: options, choices, alternatives


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str  # "--data-dir"
    value: Optional[str]  # as written ("DIR", "{a,b}", "speech|song", "5"), None for a switch
    optional: bool  # inside [...]

    def alternatives(self) -> List[str]:
        """The concrete values the synopsis shows (placeholders and "..." left out)."""
        if self.value is None:
            return []
        value = self.value
        if value.startswith("{") and value.endswith("}"):
            values = value[1:-1].split(",")
        else:
            values = value.split("|")
        values = [re.sub(r",\.\.\.$", "", v) for v in values]  # "cme,no_excite,..."
        return [
            v for v in values if v and "..." not in v and not PLACEHOLDER.match(v) and "<" not in v
        ]


def strip_brackets(word: str) -> Tuple[str, int, int]:
    """``(word without leading "[" / trailing "]", opened, closed)``."""
    opened = len(word) - len(word.lstrip("["))
    word = word[opened:]
    closed = len(word) - len(word.rstrip("]"))
    return word[: len(word) - closed] if closed else word, opened, closed


def options(words: Sequence[str], takes_value) -> List[Option]:
    """The ``--flags`` of a synopsis, with the value each is shown with. ``takes_value(flag)``
    says whether the flag takes a value (None: unknown flag; then a following word that is not
    a flag, "|" or "..." is taken as its value)."""
    out, depth = [], 0
    i = 0
    while i < len(words):
        word, opened, closed = strip_brackets(words[i])
        depth += opened
        optional = depth > 0
        depth -= closed
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
            if not eq:
                value = None
                wants = takes_value(flag)
                if not closed and i + 1 < len(words) and wants is not False:
                    nxt, n_open, n_closed = strip_brackets(words[i + 1])
                    if not n_open and nxt not in ("|", "...") and not nxt.startswith("-"):
                        value = nxt
                        depth -= n_closed
                        i += 1
            out.append(Option(flag, value, optional))
        i += 1
    return out


def concrete_argv(
    words: Sequence[str],
    takes_value,
    values: Dict[str, str] = None,
    include_optional: bool = True,
    placeholder="x",
    drop: Sequence[str] = (),
) -> List[str]:
    """One concrete argv for a synopsis: optional parts kept (or dropped), the first of each
    ``a|b`` / ``{a,b}`` alternative, the first option of a ``--x X | --y Y`` choice, ``...``
    repetitions dropped, placeholders replaced by ``placeholder`` (a string, or a function of
    the flag: None for a positional), any flag's value by ``values[flag]`` (a positional
    placeholder's by ``values[PLACEHOLDER]``), and the flags in ``drop`` left out (with their
    values)."""
    if not callable(placeholder):
        placeholder = (lambda text: lambda flag: text)(placeholder)
    values = values or {}
    out: List[str] = []
    depth, skip_depth, skip_next = 0, None, 0
    i = 0
    while i < len(words):
        raw = words[i]
        word, opened, closed = strip_brackets(raw)
        depth += opened
        keep = include_optional or depth == 0
        if word == "|":  # the alternative after "|": skip its flag (and value)
            depth -= closed
            skip_next = 1
            i += 1
            continue
        if skip_next:
            skip_next = 0
            depth -= closed
            flag = word.partition("=")[0]
            if (
                word.startswith("--")
                and "=" not in word
                and not closed
                and takes_value(flag) is not False
                and i + 1 < len(words)
            ):
                _, _, c2 = strip_brackets(words[i + 1])
                depth -= c2
                i += 1
            i += 1
            continue
        if skip_depth is not None and depth >= skip_depth:
            depth -= closed
            if depth < skip_depth:
                skip_depth = None
            i += 1
            continue
        if opened and not keep:
            skip_depth = depth
            depth -= closed
            if depth < skip_depth:
                skip_depth = None
            i += 1
            continue
        if word in ("...",) or word.endswith("...") and PLACEHOLDER.match(word[:-3] or "X"):
            depth -= closed
            i += 1
            continue
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
            chosen = []
            if eq:
                chosen.append(f"{flag}={values.get(flag, value)}")
            else:
                chosen.append(flag)
                if takes_value(flag) and not closed and i + 1 < len(words):
                    nxt, _, n_closed = strip_brackets(words[i + 1])
                    chosen.append(values.get(flag, first_value(nxt, placeholder(flag))))
                    depth -= n_closed
                    i += 1
            if flag not in drop:
                out.extend(chosen)
            depth -= closed
            i += 1
            continue
        if PLACEHOLDER.match(word):
            # A positional placeholder, or one repeated in brackets ([AUDIO ...]): once only.
            if not (opened and i + 1 < len(words) and words[i + 1].rstrip("]") == "..."):
                out.append(values.get(word, placeholder(None)))
            depth -= closed
            i += 1
            continue
        out.append(word)
        depth -= closed
        i += 1
    return out


def first_value(value: str, placeholder: str = "x") -> str:
    if value.startswith("{") and value.endswith("}"):
        return value[1:-1].split(",")[0]
    value = value.split("|")[0]
    if PLACEHOLDER.match(value):
        return placeholder
    return re.sub(r",?\.\.\.$", "", value) or placeholder


# ----------------------------------------------------------------------------------------------
# Options of argparse parsers written in a script (benchmarks/*.py), read without running it


def script_options(path: Path) -> Dict[str, dict]:
    """``{"--flag": {"takes_value": bool, "choices": list or None, "type": name or None}}`` of
    every ``add_argument`` call in ``path``. ``choices`` given as ``sorted(NAME)`` /
    ``list(NAME)`` of a module-level literal are evaluated; other expressions give None."""
    tree = ast.parse(path.read_text())
    literals = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                literals[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    found = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            continue
        flags = [
            a.value
            for a in node.args
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-")
        ]
        kwargs = {k.arg: k.value for k in node.keywords}
        action = kwargs.get("action")
        takes_value = not (
            isinstance(action, ast.Constant)
            and action.value in ("store_true", "store_false", "count")
        )
        choices = None
        if "choices" in kwargs:
            node_c = kwargs["choices"]
            try:
                choices = list(ast.literal_eval(node_c))
            except ValueError:
                if (
                    isinstance(node_c, ast.Call)
                    and isinstance(node_c.func, ast.Name)
                    and node_c.func.id in ("sorted", "list")
                    and node_c.args
                    and isinstance(node_c.args[0], ast.Name)
                    and node_c.args[0].id in literals
                ):
                    choices = list(literals[node_c.args[0].id])
        type_name = kwargs["type"].id if isinstance(kwargs.get("type"), ast.Name) else None
        for flag in flags:
            found[flag] = {"takes_value": takes_value, "choices": choices, "type": type_name}
    return found


# ----------------------------------------------------------------------------------------------
# Coverage: which test runs each README command


@dataclasses.dataclass(frozen=True)
class Coverage:
    tests: Tuple[str, ...]  # "tests/<file>.py::<function>"
    evidence: Tuple[str, ...] = ()  # strings each test's source must contain (besides the key)
    note: str = ""


RUNS = "tests/test_readme_runs.py"
COVERAGE: Dict[str, Coverage] = {
    # Run here, as written: tests/test_readme.py (cheap) and tests/test_readme_runs.py.
    "make test": Coverage(
        ("tests/test_readme.py::test_make_targets_run_the_readme_commands",),
        note="`make -n`: the recipe; the suite itself is what it runs",
    ),
    "make run": Coverage(
        ("tests/test_readme.py::test_make_targets_run_the_readme_commands",),
        note="`make -n`: the recipe runs `cme-ser run` (covered below)",
    ),
    "cme-ser embeddings fetch": Coverage(("tests/test_readme.py::test_embeddings_fetch",)),
    "cme-ser compile ... [--image IMG]": Coverage(
        (f"{RUNS}::test_compile_writes_a_kubeflow_pipeline_spec",)
    ),
    "cme-ser compile ... --trainer-workers 4": Coverage(
        (
            "tests/test_compile.py::"
            "test_trainer_workers_machine_and_accelerator_reach_every_trainers_vertex_job",
        ),
        note="'Training on several machines': the Trainers' Vertex AI job, checked in the IR",
    ),
    "cme-ser compile ... --image REGISTRY/cme-ser:1": Coverage(
        ("tests/test_compile.py::_compiled",),
        note="'Running at scale': the same flags, with an example image and buckets",
    ),
    "cme-ser serve ... --model-name cme --port 8501 --workers 2": Coverage(
        (f"{RUNS}::served",),
        note="the 'Running it' block: serve, both curls, the python -c body, the POST",
    ),
    "curl -s localhost:8501/v1/models/cme": Coverage((f"{RUNS}::test_serving_commands",)),
    "curl -s localhost:8501/v1/models/cme/metadata": Coverage((f"{RUNS}::test_serving_commands",)),
    "cme-ser predict ... --plot FILE.png": Coverage(
        ("tests/test_predict_plot.py::test_predict_plot_draws_what_the_model_answered",)
    ),
    "python -c": Coverage((f"{RUNS}::test_serving_commands",)),
    "curl -s -X POST localhost:8501/v1/models/cme:predict": Coverage(
        (f"{RUNS}::test_serving_commands",)
    ),
    "cme-ser predict ... --transcript \"Kids": Coverage(
        (f"{RUNS}::test_serving_commands",), note="the 'From audio files' block, with --url"
    ),
    "python benchmarks/train_throughput.py": Coverage(
        (f"{RUNS}::test_train_throughput_benchmark",)
    ),
    "python benchmarks/preprocess_throughput.py": Coverage(
        (f"{RUNS}::test_preprocess_throughput_benchmark",)
    ),
    "python benchmarks/serve_lifecycle.py": Coverage((f"{RUNS}::test_serve_lifecycle_benchmark",)),
    "python benchmarks/serving_load.py": Coverage((f"{RUNS}::test_serving_load_benchmark",)),
    "python benchmarks/calibration.py": Coverage((f"{RUNS}::test_calibration_benchmark",)),
    # Run by the tests that exercise them (with small corpora and models).
    "cme-ser preprocess": Coverage(
        (
            "tests/test_preprocess_pipeline.py::"
            "test_cli_preprocesses_ravdess_speech_and_song_together",
            "tests/test_portable_runner.py::preprocess",
        )
    ),
    "cme-ser preprocess ... --runner=PortableRunner": Coverage(
        ("tests/test_portable_runner.py::runs", "tests/test_portable_runner.py::portable_args"),
        evidence=("--runner=PortableRunner",),
        note="runs `preprocess` with portable_args (evidence in portable_args)",
    ),
    "cme-ser preprocess ... s3://": Coverage(
        ("tests/test_object_storage.py::preprocessed",), evidence=("s3://",)
    ),
    "python -m apache_beam.runners.worker.worker_pool_main": Coverage(
        ("tests/test_portable_runner.py::WorkerPool",), evidence=("--service_port",)
    ),
    "cme-ser run": Coverage(
        (
            "tests/conftest.py::run_until_training_then_kill",
            "tests/test_tfx_pipeline.py::test_rerun_with_cme_ser_run_comes_from_the_cache",
        )
    ),
    "tensorboard": Coverage(("tests/test_tensorboard.py::tensorboard",), evidence=('"--logdir"',)),
    "tfx pipeline create": Coverage(
        ("tests/conftest.py::small_tfx_run",), evidence=('"--engine", "local"', "local_runner.py")
    ),
    "tfx run create": Coverage(
        ("tests/conftest.py::small_tfx_run",), evidence=('"--engine", "local"', '"cme_ser"')
    ),
    "cme-ser reproduce": Coverage(
        ("tests/test_reproduce.py::test_reproduce_writes_results_and_resumes",)
    ),
    "cme-ser reproduce ... --protocol nested": Coverage(
        ("tests/test_nested.py::test_cli_runs_the_nested_protocol",),
        evidence=('"--protocol", "nested"',),
        note="the CLI with run_nested stubbed; test_nested_run_chooses_on_inner_folds_only "
        "runs the protocol itself",
    ),
    "cme-ser serve": Coverage(
        (
            "tests/test_serving_rest.py::test_cme_ser_serve_command",
            "tests/test_serving_rest.py::"
            "test_cme_ser_serve_workers_share_the_port_and_each_picks_up_new_versions",
        )
    ),
    "cme-ser predict": Coverage(
        (
            "tests/test_serving_predict.py::run_json",
            "tests/test_serving_predict.py::test_predict_text_report_and_recognition",
        ),
        note="run_json is `cme-ser predict ... --json`, used by "
        "test_predict_through_rest_matches_the_local_savedmodel",
    ),
    "cme-ser predict ... --manifest": Coverage(
        ("tests/test_predict_manifest.py::test_manifest_rows_keep_their_own_transcripts",),
        evidence=('"--manifest"',),
    ),
    "cme-ser predict ... --transcript-file": Coverage(
        ("tests/test_timeline.py::test_predict_command_writes_the_timeline",),
        evidence=('"--transcript-file"',),
    ),
    "cme-ser evaluate ... --dataset segments": Coverage(
        ("tests/test_timeline.py::test_evaluate_scores_labelled_segments",),
        evidence=('"segments"',),
    ),
    "python -m preprocessing.joined_recording": Coverage(
        ("tests/test_timeline.py::test_joined_recording_command",)
    ),
    "python benchmarks/timeline.py": Coverage(
        ("tests/test_timeline.py::test_timeline_benchmark_prints_speed_and_memory",)
    ),
    "cme-ser evaluate": Coverage(
        (
            "tests/test_evaluate.py::test_evaluate_local_model_on_song",
            "tests/test_evaluate.py::test_evaluate_served_model_on_speech_and_song",
        )
    ),
}


def coverage_for(command: Command) -> Tuple[Optional[str], Optional[Coverage]]:
    """``(selector, Coverage)`` of the most specific entry matching ``command``, or (None, None)."""
    specific = [s for s in COVERAGE if " ... " in s and matches(command, s)]
    plain = [s for s in COVERAGE if " ... " not in s and matches(command, s)]
    for found in (specific, plain):
        if found:
            return found[0], COVERAGE[found[0]]
    return None, None


def key_spellings(key: str) -> List[str]:
    """How a test's source may spell a command's key: as written, or as an argv list (the
    words after the program; the program alone for a one-word key; a curl's URL path)."""
    words = key.split()
    spellings = [key]
    if words[0] == "curl":
        spellings.append(re.sub(r"^[a-z]+://|^[^/]*", "", words[-1]))
    elif words[0] in ("python", "python3") and len(words) > 1 and words[1] not in ("-m", "-c"):
        spellings.append(Path(words[1]).name)
    elif len(words) == 1:
        spellings.append(json.dumps(words[0]))
    else:
        spellings.append(", ".join(json.dumps(w) for w in words[1:]))
    return spellings


def function_source(test: str) -> Optional[str]:
    """The source of ``"tests/<file>.py::<name>"`` (a function or class at module level), or
    None if there is none."""
    path, _, name = test.partition("::")
    file = ROOT / path
    if not file.is_file():
        return None
    text = file.read_text()
    for node in ast.parse(text).body:
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == name
        ):
            return ast.get_source_segment(text, node)
    return None
