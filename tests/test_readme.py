"""Every command in README.md is run by a test, as written, or marked there as not runnable here
(issue 16); the options each ``cme-ser`` / benchmark synopsis shows exist; the sample outputs
have the shape the code gives them. How commands are read, marked and mapped to the tests that
run them: ``tests/readme_commands.py``. The cheap commands run here; the others in
``tests/test_readme_runs.py`` or in the tests named in ``readme_commands.COVERAGE``."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import readme_commands as rc
from readme_commands import ROOT, find

BIN = Path(sys.executable).parent
COMMANDS = rc.commands()


def command_id(command: rc.Command) -> str:
    return f"L{command.line}:{command.key}"


def venv_env() -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


# ----------------------------------------------------------------------------------------------
# Extraction


def test_extraction_joins_continuations_and_drops_comments():
    text = "\n".join(
        [
            "# intro",
            "```sh",
            "make test   # comment",
            "cme-ser run [--a 1] \\  # why",
            "    [--b 2]     # note",
            "                # more note",
            "tool --x 'a # b' \\",
            "  --y=\"c#d\" # real comment",
            "python -c '",
            "import json  # inside quotes",
            "print(1)' > out.json",
            "VAR=1 python -m mod --flag",
            "```",
            "```",
            "not a command",
            "```",
        ]
    )
    found = rc.commands(text)
    assert [c.text for c in found] == [
        "make test",
        "cme-ser run [--a 1] [--b 2]",
        "tool --x 'a # b' --y=\"c#d\"",
        "python -c '\nimport json  # inside quotes\nprint(1)' > out.json",
        "VAR=1 python -m mod --flag",
    ]
    assert [c.key for c in found] == [
        "make test",
        "cme-ser run",
        "tool",
        "python -c",
        "python -m mod",
    ]
    assert found[1].comments == ("why", "note", "more note")
    assert [c.line for c in found] == [3, 4, 7, 9, 12]


def test_the_readme_commands_are_read_whole():
    keys = [c.key for c in COMMANDS]
    assert len(COMMANDS) >= 25, keys
    for expected in (
        "make test",
        "make run",
        "cme-ser embeddings fetch",
        "cme-ser preprocess",
        "cme-ser run",
        "cme-ser reproduce",
        "cme-ser compile",
        "tensorboard",
        "tfx pipeline create",
        "tfx run create",
        "cme-ser serve",
        "cme-ser predict",
        "cme-ser evaluate",
        "docker run",
        "python -c",
        "python -m apache_beam.runners.worker.worker_pool_main",
        "python benchmarks/serving_load.py",
    ):
        assert expected in keys, f"{expected!r} not found among {keys}"
    run = find("cme-ser run")
    assert "[--bless-min-ua 0.0]" in run.text and "#" not in run.text  # indented lines joined
    snippet = find("python -c")
    assert snippet.text.endswith("> body.json") and "word_end_s" in snippet.text
    assert find("cme-ser preprocess ... --runner=PortableRunner").words[0] == "cme-ser"


# ----------------------------------------------------------------------------------------------
# Coverage: run here, run by a named test, or marked


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_every_readme_command_is_run_by_a_test_or_marked(command):
    reason = command.not_run_reason
    if reason is not None:
        pytest.skip(f"{command.key} (README.md:{command.line}) not run here: {reason}")
    selector, coverage = rc.coverage_for(command)
    assert coverage is not None, (
        f"no test runs this README command and it is not marked: {command}. Run it in "
        f"tests/test_readme*.py, map it in readme_commands.COVERAGE to the test that runs it, or "
        f"mark it in README.md with '# not run here: <reason>'"
    )
    spellings = rc.key_spellings(command.key)
    sources = []
    for test in coverage.tests:
        source = rc.function_source(test)
        assert source is not None, f"{selector!r} is mapped to {test}, which does not exist"
        assert any(s in source for s in spellings + list(coverage.evidence)), (
            f"{test} (mapped to {selector!r}) never mentions {' or '.join(map(repr, spellings))}"
        )
        sources.append(source)
    for evidence in coverage.evidence:
        assert any(evidence in s for s in sources), (
            f"none of {coverage.tests} (mapped to {selector!r}) contains {evidence!r}"
        )


def test_every_coverage_entry_names_a_readme_command():
    stale = [s for s in rc.COVERAGE if not any(rc.matches(c, s) for c in COMMANDS)]
    assert not stale, f"readme_commands.COVERAGE entries matching no README command: {stale}"


def test_marks_give_a_reason():
    for command in COMMANDS:
        for comment in command.comments:
            if "not run" in comment:
                assert rc.MARK.search(comment), f"{command}: malformed mark {comment!r}"


# ----------------------------------------------------------------------------------------------
# Drift: every option a synopsis shows exists, with the values it shows


def cli_parser():
    from cli.main import build_parser

    return build_parser()


def subparser(parser, words):
    """The argparse parser of ``cme-ser <words...>`` (e.g. ["embeddings", "fetch"])."""
    import argparse

    for word in words:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert word in sub.choices, f"`cme-ser {word}` is not a subcommand: {sorted(sub.choices)}"
        parser = sub.choices[word]
    return parser


def takes_value(parser):
    def check(flag):
        action = parser._option_string_actions.get(flag)
        return None if action is None else action.nargs != 0

    return check


def check_value(flag, value, action, where):
    """``value`` (one alternative the README shows for ``flag``) is accepted by ``action``."""
    from trainer.config import VARIANTS

    if action.choices is not None:
        assert value in action.choices, f"{where}: {flag} {value!r} not in {list(action.choices)}"
    elif action.type in (int, float):
        action.type(value)
    elif flag == "--channels":
        from preprocessing.corpora import parse_channels

        parse_channels(value)
    elif flag == "--variants":
        unknown = [v for v in value.split(",") if v not in ("", "...") and v not in VARIANTS]
        assert not unknown, f"{where}: --variants {unknown} are not in trainer.config.VARIANTS"


def parse_or_fail(parser, argv, where):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `cme-ser {' '.join(argv)}` does not parse: {err.getvalue()}")


CME_SER = [c for c in COMMANDS if c.key.startswith("cme-ser ")]


@pytest.mark.parametrize("command", CME_SER, ids=command_id)
def test_cme_ser_synopsis_options_exist(command):
    parser = cli_parser()
    sub_words = command.key.split()[1:]
    sub = subparser(parser, sub_words)
    words = command.words[len(sub_words) + 1 :]
    where = f"README.md:{command.line} ({command.key})"
    for option in rc.options(words, takes_value(sub)):
        action = sub._option_string_actions.get(option.flag)
        assert action is not None, (
            f"{where}: {option.flag} is not an option of "
            f"`{command.key}` (has {sorted(sub._option_string_actions)})"
        )
        if option.value is None:
            assert action.nargs == 0, f"{where}: {option.flag} is shown without its value"
            continue
        assert action.nargs != 0, f"{where}: {option.flag} is a switch, shown with {option.value!r}"
        if option.value.startswith("{"):
            assert action.choices is not None and set(option.alternatives()) == set(
                action.choices
            ), (
                f"{where}: {option.flag} {option.value} but the choices are "
                f"{list(action.choices or [])}"
            )
        for value in option.alternatives():
            check_value(option.flag, value, action, where)

    # The line as a whole (first alternatives, every optional part) parses.
    def placeholder(flag):  # a number for a numeric option shown as N
        action = sub._option_string_actions.get(flag)
        return "1" if action is not None and action.type in (int, float) else "x"

    argv = sub_words + rc.concrete_argv(words, takes_value(sub), placeholder=placeholder)
    parse_or_fail(parser, argv, where)


BENCHMARKS = [c for c in COMMANDS if c.key.startswith("python benchmarks/")]


@pytest.mark.parametrize("command", BENCHMARKS, ids=command_id)
def test_benchmark_synopsis_options_exist(command):
    script = ROOT / command.words[1]
    assert script.is_file(), f"README.md:{command.line}: no {command.words[1]}"
    known = rc.script_options(script)
    where = f"README.md:{command.line} ({command.key})"
    serve = subparser(cli_parser(), ["serve"])
    for option in rc.options(command.words[2:], lambda f: known.get(f, {}).get("takes_value")):
        assert option.flag in known, (
            f"{where}: {option.flag} is not an option of {command.words[1]} (has {sorted(known)})"
        )
        spec = known[option.flag]
        assert (option.value is not None) == spec["takes_value"], (
            f"{where}: {option.flag} {option.value!r}"
        )
        for value in option.alternatives():
            if spec["choices"] is not None:
                assert value in spec["choices"], (
                    f"{where}: {option.flag} {value!r} not in {spec['choices']}"
                )
            elif spec["type"] in ("int", "float"):
                {"int": int, "float": float}[spec["type"]](value)
            if option.flag == "--server-arg":  # a `cme-ser serve` option
                flag = value.partition("=")[0]
                assert flag in serve._option_string_actions, (
                    f"{where}: --server-arg={value}: `cme-ser serve` has no {flag}"
                )


def test_repository_paths_in_commands_exist():
    for command in COMMANDS:
        for word in command.words:
            word = rc.strip_brackets(word)[0]
            if (
                "/" in word
                and re.search(r"\.(py|json|md|toml)$", word)
                and not word.startswith(("output/", "gs://", "/", "$"))
                and "://" not in word
            ):
                assert (ROOT / word).is_file(), f"{command}: {word} does not exist"


def test_make_targets_run_the_readme_commands():
    """`make test` / `make run` (dry run, `make -n`): their recipes run the test suite and the
    README's `cme-ser embeddings fetch` then `cme-ser run` (each covered above)."""
    for target in ("make test", "make run"):
        assert find(target).words == target.split()
    dry = {}
    for target in ("test", "run"):
        done = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        dry[target] = done.stdout
    assert re.search(r"^\S*python -m pytest -q -n 2 tests$", dry["test"], re.M), dry["test"]
    fetch = re.search(r"^\S*/(cme-ser embeddings fetch)$", dry["run"], re.M)
    run = re.search(r"^\S*/(cme-ser run)\b.*--output output$", dry["run"], re.M)
    assert fetch and run and fetch.start() < run.start(), dry["run"]
    for selector in (fetch.group(1), run.group(1)):
        assert rc.coverage_for(find(selector))[1] is not None


# ----------------------------------------------------------------------------------------------
# Cheap commands, run as written


def test_embeddings_fetch():
    command = find("cme-ser embeddings fetch")
    argv = rc.concrete_argv(command.words, lambda f: True, include_optional=False)
    assert argv == ["cme-ser", "embeddings", "fetch"]
    done = subprocess.run(argv, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from preprocessing.embeddings import default_embeddings_path

    printed = Path(done.stdout.strip().splitlines()[-1])
    assert printed == default_embeddings_path() and printed.exists()


# ----------------------------------------------------------------------------------------------
# Sample outputs


def signature_output_names():
    """trainer/signature_names.py's CLASS_OUTPUTS + EXCITATION_OUTPUTS (a module without
    TensorFlow; tests/test_export_portability.py checks them against a real export)."""
    from trainer.signature_names import CLASS_OUTPUTS, EXCITATION_OUTPUTS

    return CLASS_OUTPUTS + EXCITATION_OUTPUTS


def snippet_request():
    """The predict_waveform instance the README's `python -c` snippet builds (its literals)."""
    text = find("python -c").text
    words = json.loads(re.search(r'"words": (\[[^\]]*\])', text).group(1))
    starts = json.loads(re.search(r'"word_start_s": (\[[^\]]*\])', text).group(1))
    ends = json.loads(re.search(r'"word_end_s": (\[[^\]]*\])', text).group(1))
    audio = re.search(r'sf\.read\("([^"]+)"', text).group(1)
    return {"words": words, "word_start_s": starts, "word_end_s": ends, "audio": audio}


def test_json_sample_has_the_predict_waveform_outputs():
    from trainer.config import DEFAULT_CLASSES

    sample = rc.json_sample()
    assert list(sample) == ["predictions"] and len(sample["predictions"]) == 1
    [row] = sample["predictions"]
    assert set(row) == set(signature_output_names())
    request = snippet_request()
    words = len(request["words"])
    assert row["class_names"] == list(DEFAULT_CLASSES)
    probabilities = row["probabilities"]
    assert len(probabilities) == len(row["class_names"])
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in probabilities)
    assert abs(sum(probabilities) - 1) < 1e-4
    assert isinstance(row["class_ids"], int)
    assert row["class_ids"] == probabilities.index(max(probabilities))
    assert row["classes"] == row["class_names"][row["class_ids"]]
    for key in ("acoustic_excitation", "semantic_excitation"):
        assert len(row[key]) == words and all(isinstance(x, float) and 0 < x < 1 for x in row[key])
    # The snippet's request: the inputs of the signature, a word per time.
    inputs = re.findall(r'"(\w+)":', find("python -c").text)
    assert set(inputs) >= {"waveform", "num_samples", "words", "word_start_s", "word_end_s"}
    assert words == len(request["word_start_s"]) == len(request["word_end_s"])


def readme_report_sample() -> list:
    return rc.plain_block_after("### From audio files").splitlines()


def test_text_report_sample_is_what_predict_prints():
    """The README's `cme-ser predict` report is serving.predict.format_text of the README's
    JSON answer to the snippet's request (the lines it shows; "..." stands for the rest)."""
    import numpy as np

    from serving.client import Utterance, predictions_from_outputs
    from serving.predict import Result, format_text

    lines = readme_report_sample()
    header = re.fullmatch(
        r"(?P<audio>\S+): (?P<emotion>\w+) \(p = [0-9.]+; (?P<seconds>[0-9.]+)"
        r" s, (?P<source>\w+) alignment\)",
        lines[0],
    )
    assert header, lines[0]
    request = snippet_request()
    assert request["audio"].endswith("/" + header["audio"])
    audio = ROOT / request["audio"]
    if audio.is_file():  # the duration the report shows is the file's
        import soundfile

        assert f"{soundfile.info(str(audio)).duration:.2f}" == header["seconds"]
    [row] = rc.json_sample()["predictions"]
    outputs = {k: np.asarray([v]) for k, v in row.items()}
    [prediction] = predictions_from_outputs(
        outputs,
        [
            Utterance(
                np.zeros(16000, np.float32),
                request["words"],
                request["word_start_s"],
                request["word_end_s"],
            )
        ],
    )
    result = Result(
        audio=header["audio"],
        prediction=prediction,
        duration_s=float(header["seconds"]),
        alignment_source=header["source"],
    )
    printed = format_text([result]).splitlines()
    shown = [line for line in lines if line.strip() != "..."]
    assert lines[len(shown) :] == ["  ..."] or lines == shown, lines
    assert printed[: len(shown)] == shown


# ----------------------------------------------------------------------------------------------
# The checks above catch drift (on made-up README lines)

FAILS = (AssertionError, ValueError, pytest.fail.Exception)


@pytest.mark.parametrize(
    "text, check",
    [
        (
            "cme-ser serve --model-base-path DIR [--enable-batchin]",
            test_cme_ser_synopsis_options_exist,
        ),
        ("cme-ser serve --model-base-path DIR [--port]", test_cme_ser_synopsis_options_exist),
        (
            "cme-ser serve --model-base-path DIR [--enable-batching 1]",
            test_cme_ser_synopsis_options_exist,
        ),
        (
            "cme-ser preprocess --dataset {ravdess,iemocap} --data-dir DIR --out DIR",
            test_cme_ser_synopsis_options_exist,
        ),
        (
            "cme-ser preprocess --dataset ravdess --data-dir DIR --out DIR "
            "[--overlong truncate|drop]",
            test_cme_ser_synopsis_options_exist,
        ),
        ("cme-ser run [--variant cme|cme_nope|...]", test_cme_ser_synopsis_options_exist),
        ("cme-ser run [--channels speech,opera]", test_cme_ser_synopsis_options_exist),
        ("cme-ser run [--folds five]", test_cme_ser_synopsis_options_exist),
        ("cme-ser reproduce [--variants cme,nope,...]", test_cme_ser_synopsis_options_exist),
        (
            "cme-ser evaluate --model-dir DIR | --url URL [--json]",
            test_cme_ser_synopsis_options_exist,
        ),
        (
            "cme-ser predict",
            test_cme_ser_synopsis_options_exist,
        ),  # neither audio nor --manifest: ok
        ("cme-ser frobnicate --x 1", test_cme_ser_synopsis_options_exist),
        (
            "python benchmarks/train_throughput.py --shape ravdess|librispeech",
            test_benchmark_synopsis_options_exist,
        ),
        (
            "python benchmarks/serving_load.py --url URL --server-arg=--wrkers=2",
            test_benchmark_synopsis_options_exist,
        ),
        ("python benchmarks/nope.py --x 1", test_benchmark_synopsis_options_exist),
        ("cme-ser frobnicate --x 1", test_every_readme_command_is_run_by_a_test_or_marked),
        ("tensorboard --logdir DIR", None),  # below: mapped to a test that does not exist
    ],
)
def test_drift_is_caught(text, check, monkeypatch):
    [command] = rc.commands(f"```sh\n{text}\n```\n")
    if text == "cme-ser predict":  # parses: the positional is optional in argparse
        check(command)
        return
    if check is None:
        monkeypatch.setitem(
            rc.COVERAGE, "tensorboard", rc.Coverage(("tests/test_tensorboard.py::no_such_fixture",))
        )
        check = test_every_readme_command_is_run_by_a_test_or_marked
    with pytest.raises(FAILS):
        check(command)


def test_unrelated_mapping_and_marks(monkeypatch):
    [unrelated] = rc.commands("```sh\ncme-ser serve --model-base-path DIR\n```\n")
    monkeypatch.setitem(
        rc.COVERAGE,
        "cme-ser serve",
        rc.Coverage(("tests/test_compile.py::test_kubeflow_json_names_every_component",)),
    )
    with pytest.raises(AssertionError, match="never mentions 'cme-ser serve'"):
        test_every_readme_command_is_run_by_a_test_or_marked(unrelated)
    [marked] = rc.commands("```sh\ncme-ser frobnicate  # not run here: no frobnicator\n```\n")
    with pytest.raises(pytest.skip.Exception, match="not run here: no frobnicator"):
        test_every_readme_command_is_run_by_a_test_or_marked(marked)
    # Valid lines pass.
    for text in (
        "cme-ser serve --model-base-path DIR [--workers 2] [--enable-batching]",
        "python benchmarks/train_throughput.py --shape ravdess|iemocap --batch 32",
    ):
        [command] = rc.commands(f"```sh\n{text}\n```\n")
        check = (
            test_cme_ser_synopsis_options_exist
            if text.startswith("cme-ser")
            else test_benchmark_synopsis_options_exist
        )
        check(command)
