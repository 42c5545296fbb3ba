"""The README commands that take more than a second or two, run as the README writes them
(``tests/readme_commands.py``): only placeholders and sizes change (a small exported model for
``output/serving_model/cme``, a free port for 8501, ``--cycles 1`` for ``--cycles 50``, ...),
and each changed option must be one the README line shows. ``cme-ser compile``, the "Running
it" block (``cme-ser serve``, both ``curl`` GETs, the ``python -c`` body, the ``curl`` POST,
whose answer must have the README sample's keys and types), ``cme-ser predict`` against it
(its report must have the README sample's lines) and the four benchmarks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import readme_commands as rc
from readme_commands import ROOT, find
from serving_support import server_stderr, start_server, stop_server

BIN = Path(sys.executable).parent
from data_support import RAVDESS_SPEECH  # noqa: E402
from data_support import needs_speech as needs_ravdess  # noqa: E402

TIMEOUT = 900


def env() -> dict:
    """The README's shell: the venv's `cme-ser`, `python`, `tensorboard` first on PATH."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def cme_ser_takes_value(command: rc.Command):
    from cli.main import build_parser

    parser = build_parser()
    for word in command.key.split()[1:]:
        parser = next(
            a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
        ).choices[word]

    def check(flag):
        action = parser._option_string_actions.get(flag)
        return None if action is None else action.nargs != 0

    return check


def script_takes_value(command: rc.Command):
    known = rc.script_options(ROOT / command.words[1])
    return lambda flag: known.get(flag, {}).get("takes_value")


def argv_for(command: rc.Command, values=None, include_optional=True, drop=()):
    """The README command as an argv, with ``values`` for the options (or positional
    placeholders) it shows; only those may change."""
    values = values or {}
    takes_value = (
        cme_ser_takes_value(command)
        if command.key.startswith("cme-ser ")
        else script_takes_value(command)
    )
    shown = {o.flag for o in rc.options(command.words, takes_value)} | {
        rc.strip_brackets(w)[0] for w in command.words
    }
    changed = set(values) | set(drop)
    assert changed <= shown, f"{command}: changes {sorted(changed - shown)}, not in the README"
    return rc.concrete_argv(
        command.words, takes_value, values, include_optional=include_optional, drop=drop
    )


def run(argv, cwd, timeout=TIMEOUT, shell=False):
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=shell,
        executable="/bin/bash" if shell else None,
    )
    assert done.returncode == 0, (
        f"{argv} exited {done.returncode}:\n" + done.stdout[-3000:] + done.stderr[-5000:]
    )
    return done.stdout


def last_json_line(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# ----------------------------------------------------------------------------------------------
# cme-ser compile


def test_compile_writes_a_kubeflow_pipeline_spec(tmp_path):
    command = find("cme-ser compile ... [--image IMG]")
    argv = argv_for(command, include_optional=False)
    assert argv == ["cme-ser", "compile", "--target", "kubeflow", "--output", "pipeline.json"]
    run(argv, cwd=tmp_path)
    spec = json.loads((tmp_path / "pipeline.json").read_text())
    assert {"pipelineSpec", "runtimeConfig"} <= set(spec)
    pipeline = spec["pipelineSpec"]
    assert {"components", "deploymentSpec", "root", "pipelineInfo", "schemaVersion"} <= set(
        pipeline
    )
    assert {
        "CorpusExampleGen",
        "Trainer.fold0",
        "Evaluator.fold0",
        "CrossValidationReport",
        "Trainer.final",
        "Pusher",
    } <= set(pipeline["root"]["dag"]["tasks"])


# ----------------------------------------------------------------------------------------------
# The "Running it" block: cme-ser serve, curl, python -c, curl POST; then cme-ser predict


@pytest.fixture(scope="module")
def served(small_model_base):
    """The README's `cme-ser serve ... --workers 2` on the small model, on a free port."""
    command = find("cme-ser serve ... --model-name cme --port 8501 --workers 2")
    argv = argv_for(command, {"--model-base-path": str(small_model_base), "--port": "0"})
    process, url = start_server(argv, env=env())
    try:
        line = process.announcement
        assert "versions available: [1]" in line and "2 worker processes" in line, line
        yield {"url": url, "port": int(url.rsplit(":", 1)[1])}
        assert stop_server(process) == 0, server_stderr(process)[-5000:]
    finally:
        stop_server(process, signal_=None)


def readme_status_answer() -> dict:
    """The status answer the README's request table shows for `GET /v1/models/cme`."""
    row = next(
        line
        for line in rc.readme_text().splitlines()
        if line.startswith("| `GET /v1/models/cme[") and "/metadata" not in line
    )
    return json.loads(re.search(r"`(\{\"model_version_status\".*?\})`", row).group(1))


def same_shape(answer, sample, where="") -> None:
    """``answer`` has ``sample``'s keys, value types and list lengths, recursively."""
    assert type(answer) is type(sample), (
        f"{where}: {type(answer).__name__} in the answer, {type(sample).__name__} in the README"
    )
    if isinstance(sample, dict):
        assert set(answer) == set(sample), f"{where}: keys {sorted(answer)} != {sorted(sample)}"
        for key in sample:
            same_shape(answer[key], sample[key], f"{where}.{key}")
    elif isinstance(sample, list):
        assert len(answer) == len(sample), f"{where}: {len(answer)} items != {len(sample)}"
        for i, (a, s) in enumerate(zip(answer, sample)):
            same_shape(a, s, f"{where}[{i}]")


@needs_ravdess
def test_serving_commands(served, tmp_path):
    """As written, in a directory where `../shared/data` is the corpus, 8501 -> the free port."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(RAVDESS_SPEECH.parent)
    work = tmp_path / "work"
    work.mkdir()

    def shell(selector):
        text = find(selector).text.replace("localhost:8501", f"localhost:{served['port']}")
        return run(text, cwd=work, shell=True, timeout=300)

    status = json.loads(shell("curl -s localhost:8501/v1/models/cme"))
    assert status == readme_status_answer()
    metadata = json.loads(shell("curl -s localhost:8501/v1/models/cme/metadata"))
    assert set(metadata) == {"model_spec", "metadata"}
    assert {"predict_waveform", "serving_default"} <= set(
        metadata["metadata"]["signature_def"]["signature_def"]
    )
    shell("python -c")
    body = json.loads((work / "body.json").read_text())
    assert body["signature_name"] == "predict_waveform"
    answer = json.loads(shell("curl -s -X POST localhost:8501/v1/models/cme:predict"))
    sample = rc.json_sample()
    same_shape(answer, sample, "predictions")
    assert answer["predictions"][0]["class_names"] == sample["predictions"][0]["class_names"]

    # `cme-ser predict AUDIO --transcript "..." --url http://localhost:8501`, from the corpus.
    command = find('cme-ser predict ... --transcript "Kids')
    report = rc.plain_block_after("### From audio files").splitlines()
    audio = report[0].split(":")[0]
    argv = argv_for(
        command,
        {"AUDIO": audio, "--url": f"http://localhost:{served['port']}"},
        drop=("--json", "--model-dir"),
    )
    assert argv[:2] == ["cme-ser", "predict"] and "--transcript" in argv and "--url" in argv
    lines = run(argv, cwd=RAVDESS_SPEECH, timeout=300).splitlines()
    # The header as the README shows it, but for the emotion and its probability (the small
    # model's weights are random): file, duration and alignment source must be the same.
    varies = r": \w+ \(p = [0-9.]+;"
    header = varies.join(re.escape(part) for part in re.split(varies, report[0]))
    assert re.fullmatch(header, lines[0]), (lines[0], report[0])
    names = re.findall(r"(\w+) [0-9.]+", report[1])
    assert re.findall(r"(\w+) [0-9.]+", lines[1]) and names == re.findall(
        r"(\w+) [0-9.]+", lines[1]
    ), (lines[1], report[1])
    assert lines[2] == report[2]
    for shown, printed in zip(report[3:], lines[3:]):
        if shown.strip() == "...":
            break
        assert printed.split()[:3] == shown.split()[:3], (printed, shown)


# ----------------------------------------------------------------------------------------------
# Benchmarks (python is the venv's, as `make` would run them), with tiny sizes


def test_train_throughput_benchmark():
    command = find("python benchmarks/train_throughput.py")
    argv = argv_for(command, {"--batch": "2", "--steps": "1"})
    assert argv[:4] == ["python", "benchmarks/train_throughput.py", "--shape", "ravdess"]
    result = last_json_line(run(argv, cwd=ROOT))
    assert result["shape"] == "ravdess" and result["batch"] == 2
    assert result["train_utt_per_s"] > 0 and result["infer_utt_per_s"] > 0


@needs_ravdess
def test_preprocess_throughput_benchmark(tmp_path):
    corpus = tmp_path / "corpus"  # one angry utterance of 5 actors: one per fold
    for actor in range(1, 6):
        name = f"03-01-05-01-01-01-{actor:02d}.flac"
        (corpus / f"Actor_{actor:02d}").mkdir(parents=True)
        (corpus / f"Actor_{actor:02d}" / name).symlink_to(
            RAVDESS_SPEECH / f"Actor_{actor:02d}" / name
        )
    argv = argv_for(find("python benchmarks/preprocess_throughput.py"), {"--data-dir": str(corpus)})
    result = last_json_line(run(argv, cwd=ROOT))
    assert result["utterances"] == result["records"] == 5 and result["errors"] == 0


def test_serve_lifecycle_benchmark(small_model_base):
    argv = argv_for(
        find("python benchmarks/serve_lifecycle.py"),
        {"--model-base-path": str(small_model_base), "--cycles": "1"},
        include_optional=False,
    )
    result = last_json_line(run(argv, cwd=ROOT))
    assert result["cycles"] == 1 and result["bad_exits"] == [] and result["tracebacks"] == 0


@needs_ravdess
def test_serving_load_benchmark(small_model_base):
    command = find("python benchmarks/serving_load.py")
    argv = argv_for(
        command, {"--model-base-path": str(small_model_base), "--clients": "2", "--requests": "4"}
    )
    assert "--server-arg=--workers=2" in argv and "--server-arg=--enable-batching" in argv
    result = last_json_line(run(argv, cwd=ROOT))
    reference = result["inprocess"]
    assert reference["batch"] == 8 and reference["utterances_per_s"] > 0
    for protocol in ("rest", "grpc"):  # both, against the in-process rate of the same run
        measured = result[protocol]
        assert measured["requests"] == 4 and measured["errors"] == 0
        assert result["ratios"][protocol] == measured["ratio_to_inprocess"]
        assert (
            abs(
                measured["ratio_to_inprocess"]
                - measured["requests_per_s"] / reference["utterances_per_s"]
            )
            < 1e-3
        )
    assert result["model"]["path"].startswith(str(small_model_base))
    assert result["model"]["parameters"] > 0
    assert result["server_args"] == ["--workers=2", "--enable-batching"]


def test_calibration_benchmark():
    """As written, on the committed stability archive: it recomputes the archived output
    (docs/results/calibration/stability-run0.json) exactly."""
    argv = argv_for(find("python benchmarks/calibration.py"), {})
    result = last_json_line(run(argv, cwd=ROOT))
    archived = json.loads(
        (ROOT / "docs" / "results" / "calibration" / "stability-run0.json").read_text()
    )
    assert json.loads(json.dumps(result)) == archived
    assert result["seeds"] == [0, 1, 2] and result["channels"]["speech"]["n"] == 672
