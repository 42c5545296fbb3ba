"""The README's `tensorboard --logdir output/tfx/root` on a real (small) pipeline run: the
server starts from the venv (tensorboard 2.16 imports pkg_resources, so setuptools must still
ship it) and serves every Trainer's per-epoch loss / WA / UA curves, as the event files and
the Trainer's fit.json have them."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TRAINERS = ("Trainer.fold0", "Trainer.fold1", "Trainer.final")
TAGS = {"epoch_loss", "epoch_wa", "epoch_ua"}
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        return json.loads(response.read().decode())


def model_run(root: Path, trainer: str) -> Path:
    """The model_run directory (the Keras TensorBoard log_dir) of ``trainer``'s completed
    execution: the one with a fit.json (the shared run was killed once, so a Trainer may also
    have the directory of an execution that never finished)."""
    runs = [p for p in (root / trainer / "model_run").iterdir() if (p / "fit.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def run_name(root: Path, trainer: str, subrun: str) -> str:
    # TensorBoard names a run by its directory relative to --logdir; the Keras callback writes
    # "train" and "validation" subdirectories of its log_dir.
    return (model_run(root, trainer) / subrun).relative_to(root).as_posix()


def expected_runs(root: Path) -> set:
    return {run_name(root, t, sub) for t in TRAINERS for sub in ("train", "validation")}


@pytest.fixture(scope="module")
def tensorboard(small_tfx_run, tmp_path_factory):
    """The README's command on the pipeline root, once every Trainer run is listed."""
    root = small_tfx_run["root"]
    port = free_port()
    log_path = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [
            str(BIN / "tensorboard"),
            "--logdir",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wanted, runs = expected_runs(root), []
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"tensorboard exited with {process.returncode}:\n"
                    + log_path.read_text()[-5000:]
                )
            try:
                runs = get_json(port, "/data/runs")
                if wanted <= set(runs):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(
                    f"tensorboard did not list {sorted(wanted)} within "
                    f"{STARTUP_SECONDS} s (it lists {runs}):\n" + log_path.read_text()[-5000:]
                )
            time.sleep(1)
        yield {"port": port, "root": root, "runs": runs, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def test_every_trainer_train_and_validation_run_is_listed(tensorboard):
    root, runs = tensorboard["root"], tensorboard["runs"]
    for fold in (0, 1):
        exec_id = model_run(root, f"Trainer.fold{fold}").name
        assert f"Trainer.fold{fold}/model_run/{exec_id}/train" in runs
        assert f"Trainer.fold{fold}/model_run/{exec_id}/validation" in runs
    # Nothing but the Trainers' event files is under the root (no refit run by default); a run
    # not in expected_runs can only be the killed execution's partial one.
    assert expected_runs(root) <= set(runs)
    for run in set(runs) - expected_runs(root):
        trainer, kind, _, subrun = run.split("/")
        assert trainer in TRAINERS and kind == "model_run" and subrun in ("train", "validation")
        assert not (root / trainer / "model_run" / run.split("/")[2] / "fit.json").exists()


def test_each_run_has_loss_wa_and_ua_scalars(tensorboard):
    tags = get_json(tensorboard["port"], "/data/plugin/scalars/tags")
    for trainer in TRAINERS:
        for subrun in ("train", "validation"):
            run = run_name(tensorboard["root"], trainer, subrun)
            assert TAGS <= set(tags.get(run, {})), (run, tags.get(run))


def test_curves_have_one_point_per_epoch_and_match_fit_json(tensorboard):
    port, root = tensorboard["port"], tensorboard["root"]
    for trainer in TRAINERS:
        fit = json.loads((model_run(root, trainer) / "fit.json").read_text())
        epochs = fit["epochs_run"]
        assert 1 <= epochs <= 2  # the shared run trains for at most 2 epochs
        for subrun in ("train", "validation"):
            run = run_name(root, trainer, subrun)
            curves = {}
            for tag in TAGS:
                points = get_json(port, "/data/plugin/scalars/scalars", run=run, tag=tag)
                # [wall_time, step, value], one per epoch, steps 0..epochs-1
                assert [step for _, step, _ in points] == list(range(epochs)), (run, tag, points)
                curves[tag] = [value for _, _, value in points]
            assert all(0.0 <= v <= 1.0 for tag in ("epoch_wa", "epoch_ua") for v in curves[tag])
            assert all(math.isfinite(v) and v > 0 for v in curves["epoch_loss"])
            if subrun == "validation":
                # The served validation UA at the selected epoch is the Trainer's own record.
                assert curves["epoch_ua"][fit["best_epoch"] - 1] == pytest.approx(
                    fit["best_val_ua"], abs=1e-6
                )
