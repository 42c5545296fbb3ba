"""The training progress line: epochs done out of the maximum, elapsed, an upper bound on the
time left, and a closing line per fit, whatever stops it."""

import io
import re

import keras
import numpy as np

from trainer.progress import EpochProgress, _clock

LINE = re.compile(
    r"^run A, (?P<phase>[a-z ]+): epoch (?P<done>\d+)/(?P<total>\d+), "
    r"(?P<elapsed>\d+:\d\d) elapsed, at most (?P<left>\d+:\d\d) left$"
)
END = re.compile(
    r"^run A, (?P<phase>[a-z ]+): stopped at epoch (?P<done>\d+)/(?P<total>\d+) "
    r"after \d+:\d\d$"
)


def _tiny_fit(callbacks, epochs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks)


def test_one_line_per_epoch_then_a_closing_line_for_each_fit():
    out = io.StringIO()
    progress = EpochProgress("run A", ("selecting the epoch", "refit"), stream=out, every_seconds=0)
    _tiny_fit([progress], 4)
    _tiny_fit([progress], 2)  # the second fit of the same callback is the next phase
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 + 1 + 2 + 1
    first = [LINE.match(line) for line in lines[:4]]
    assert [int(m["done"]) for m in first] == [1, 2, 3, 4]
    assert {m["total"] for m in first} == {"4"} and {m["phase"] for m in first} == {
        "selecting the epoch"
    }
    assert first[-1]["left"] == "0:00"  # nothing left after the last epoch
    assert END.match(lines[4]).groupdict() == {
        "phase": "selecting the epoch",
        "done": "4",
        "total": "4",
    }
    second = [LINE.match(line) for line in lines[5:7]]
    assert [(m["phase"], m["done"], m["total"]) for m in second] == [
        ("refit", "1", "2"),
        ("refit", "2", "2"),
    ]
    assert END.match(lines[7])["phase"] == "refit"


def test_early_stopping_shows_where_it_stopped_out_of_the_maximum():
    out = io.StringIO()
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    _tiny_fit([stop, EpochProgress("run A", stream=out, every_seconds=0)], 50)
    lines = out.getvalue().splitlines()
    assert END.match(lines[-1]).groupdict() == {"phase": "training", "done": "2", "total": "50"}


def test_off_a_terminal_lines_are_throttled_but_the_end_is_always_shown():
    out = io.StringIO()
    _tiny_fit([EpochProgress("run A", stream=out, every_seconds=3600)], 5)
    lines = out.getvalue().splitlines()
    # The first epoch ends less than an hour after the fit began: only the closing line.
    assert len(lines) == 1 and END.match(lines[0])["done"] == "5"


def test_on_a_terminal_the_line_is_rewritten_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    _tiny_fit([EpochProgress("run A", stream=out, every_seconds=3600)], 3)
    text = out.getvalue()
    assert text.count("\r") == 3 + 1 and text.count("\n") == 1
    # (The time it took is the machine's: a loaded one takes more than a second.)
    assert re.search(r"\rrun A, training: stopped at epoch 3/3 after \d+:\d\d\033\[K\n$", text)


def test_clock():
    assert [_clock(s) for s in (0, 59.4, 61, 3599, 3600, 3725)] == [
        "0:00",
        "0:59",
        "1:01",
        "59:59",
        "1:00:00",
        "1:02:05",
    ]
