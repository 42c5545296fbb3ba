"""The serving SavedModel: both signatures, loaded where neither this project nor tensorflow-text /
tensorflow-io can be imported, agree with each other and with the Keras model on a real
RAVDESS utterance; in-graph conventions (seconds -> frames, vocabulary, padding)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_support import (
    ANGRY,
    CLASSES,
    DOGS,
    KIDS,
    SAD,
    aligned,
    example_bytes,
    export,
    glove,
    needs_ravdess,
    small_model,
    timed_words,
    waveform_inputs,
)

from preprocessing import records
from preprocessing.alignment import _seconds_to_frame
from preprocessing.embeddings import WordVectors
from trainer.export import (
    PREDICT_WAVEFORM,
    PREDICT_WAVEFORM_BYTES,
    SERVING_DEFAULT,
    export_saved_model,
    seconds_to_spans,
    serving_vocabulary,
)

pytestmark = needs_ravdess


@pytest.fixture(scope="module")
def exported(small_model_export):
    model, _, info = small_model_export  # conftest: small_model() exported once per session
    return model, info


# Run in a fresh interpreter: the SavedModel alone must be enough (no custom classes, no
# tensorflow-text / tensorflow-io kernels, none of this project's packages).
LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, example_file, inputs_file = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    examples = open(example_file, "rb").read()
    by_example = loaded.signatures["serving_default"](examples=tf.constant([examples]))
    arrays = np.load(inputs_file, allow_pickle=True)
    feeds = {k: tf.constant(arrays[k]) for k in arrays.files}
    by_waveform = loaded.signatures["predict_waveform"](**feeds)
    # The same samples as little-endian float32 bytes, one string per row.
    feeds["waveform_bytes"] = tf.constant([arrays["waveform"][0].astype("<f4").tobytes()])
    del feeds["waveform"]
    by_bytes = loaded.signatures["predict_waveform_bytes"](**feeds)
    out = {"example": {k: v.numpy().tolist() for k, v in by_example.items()},
           "waveform": {k: v.numpy().tolist() for k, v in by_waveform.items()},
           "bytes": {k: v.numpy().tolist() for k, v in by_bytes.items()},
           "modules": sorted(m for m in sys.modules if m.split(".")[0] in (
               "tensorflow_text", "tensorflow_io", "infra", "preprocessing", "trainer",
               "serving", "pipeline", "experiments", "cli"))}
    print(json.dumps(out, default=lambda b: b.decode()))
""")


def test_both_signatures_agree_in_a_fresh_process(exported, tmp_path):
    model, info = exported
    serialized = example_bytes(ANGRY, KIDS)
    waveform, result = aligned(ANGRY, KIDS)
    words, starts, ends = timed_words(result)
    assert words == ["kids", "are", "talking", "by", "the", "door"]
    assert all(glove().index(w) < info["vocab_size"] for w in words)  # all in the served vocab
    (tmp_path / "example.pb").write_bytes(serialized)
    inputs = waveform_inputs([(waveform, words, starts, ends)])
    np.savez(tmp_path / "inputs.npz", **inputs)

    run = subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            info["path"],
            str(tmp_path / "example.pb"),
            str(tmp_path / "inputs.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["modules"] == []

    by_example = np.asarray(out["example"]["probabilities"])
    by_waveform = np.asarray(out["waveform"]["probabilities"])
    # The Keras model on the very record preprocessing wrote.
    parsed = records.parse_examples(tf.constant([serialized]), 50)
    keras_probs = model(records.to_model_inputs(parsed), training=False).numpy()
    np.testing.assert_allclose(by_example, keras_probs, atol=1e-5)
    np.testing.assert_allclose(by_waveform, by_example, atol=1e-4)
    assert out["bytes"] == out["waveform"]  # the same graph after decoding the bytes
    assert by_example.shape == (1, 4) and abs(by_example.sum() - 1) < 1e-5
    assert by_example.max() - np.sort(by_example[0])[-2] > 1e-3  # a clear argmax

    top = int(np.argmax(by_example[0]))
    for outputs in (out["example"], out["waveform"]):
        assert outputs["class_ids"] == [top]
        assert outputs["classes"] == [CLASSES[top]]
        assert outputs["class_names"] == [list(CLASSES)]
    for key in ("acoustic_excitation", "semantic_excitation"):
        gates = np.asarray(out["waveform"][key])
        assert gates.shape == (1, 6)
        assert np.all((gates > 0) & (gates < 1)), gates  # means of sigmoids
    assert set(out["example"]) == {"probabilities", "class_ids", "classes", "class_names"}


def test_excitation_equals_the_mean_of_the_keras_gates(exported):
    model, info = exported
    from trainer.export import excitation_model

    gates_model = excitation_model(model)
    serialized = example_bytes(SAD, DOGS, label="sad")
    parsed = records.parse_examples(tf.constant([serialized]), 50)
    _, gate_a, gate_s = gates_model(records.to_model_inputs(parsed), training=False)
    waveform, result = aligned(SAD, DOGS)
    loaded = tf.saved_model.load(info["path"])
    out = loaded.signatures[PREDICT_WAVEFORM](
        **{
            k: tf.constant(v)
            for k, v in waveform_inputs([(waveform, *timed_words(result))]).items()
        }
    )
    np.testing.assert_allclose(
        out["acoustic_excitation"].numpy(), gate_a.numpy().mean(axis=-1), atol=1e-4
    )
    np.testing.assert_allclose(
        out["semantic_excitation"].numpy(), gate_s.numpy().mean(axis=-1), atol=1e-4
    )


def test_padding_a_batch_changes_nothing(exported):
    """A short utterance alone, and padded next to a longer one with more words (waveform zero
    padded, words "" padded, times 0 padded): same outputs; padding slots give 0 excitation."""
    _, info = exported
    loaded = tf.saved_model.load(info["path"])
    run = loaded.signatures[PREDICT_WAVEFORM]
    long_wave, long_words = aligned(ANGRY, KIDS)
    short_wave = long_wave[:24000]  # 1.5 s: "kids are" (the voicing starts at about 1 s)
    short = (short_wave, ["kids", "are"], [1.0, 1.2], [1.2, 1.4])
    alone = run(**{k: tf.constant(v) for k, v in waveform_inputs([short]).items()})
    both = run(
        **{
            k: tf.constant(v)
            for k, v in waveform_inputs([(long_wave, *timed_words(long_words)), short]).items()
        }
    )
    np.testing.assert_allclose(
        both["probabilities"].numpy()[1], alone["probabilities"].numpy()[0], atol=1e-5
    )
    for key in ("acoustic_excitation", "semantic_excitation"):
        row = both[key].numpy()[1]
        np.testing.assert_allclose(row[:2], alone[key].numpy()[0], atol=1e-5)
        assert np.all(row[2:] == 0.0)
    # predict_waveform_bytes: rows of different byte lengths, padded in-graph.
    feeds = waveform_inputs([(long_wave, *timed_words(long_words)), short])
    del feeds["waveform"]
    feeds["waveform_bytes"] = np.array(
        [long_wave.astype("<f4").tobytes(), short_wave.astype("<f4").tobytes()], dtype=object
    )
    by_bytes = loaded.signatures[PREDICT_WAVEFORM_BYTES](
        **{k: tf.constant(v) for k, v in feeds.items()}
    )
    for key in ("probabilities", "acoustic_excitation", "semantic_excitation"):
        np.testing.assert_allclose(by_bytes[key].numpy(), both[key].numpy(), atol=1e-6)


def test_words_are_lowercased_and_unknown_words_get_the_zero_vector(exported):
    _, info = exported
    loaded = tf.saved_model.load(info["path"])
    run = loaded.signatures[PREDICT_WAVEFORM]
    waveform, result = aligned(ANGRY, KIDS)
    words, starts, ends = timed_words(result)

    def probs(ws):
        feeds = waveform_inputs([(waveform, ws, starts, ends)])
        return run(**{k: tf.constant(v) for k, v in feeds.items()})["probabilities"].numpy()

    base = probs(words)
    np.testing.assert_allclose(probs([w.upper() for w in words]), base, atol=1e-6)
    # Two different unknown words both mean "zero vector": same answer, unlike a known word.
    unknown_a = probs(["qqzzxv"] + words[1:])
    unknown_b = probs(["zzqqvx"] + words[1:])
    np.testing.assert_allclose(unknown_a, unknown_b, atol=1e-6)
    assert np.abs(unknown_a - base).max() > 1e-6


def test_seconds_to_frames_follow_the_alignment_convention():
    frames = np.arange(0, 3000, dtype=np.int64)
    seconds = (frames / 100.0).astype(np.float32)[None]
    spans = seconds_to_spans(
        tf.constant(seconds), tf.constant(seconds + 0.01), tf.constant([4000])
    ).numpy()[0]
    np.testing.assert_array_equal(spans[:, 0], frames)  # frame / 100 round-trips exactly
    np.testing.assert_array_equal(spans[:, 1], frames + 1)
    # The same rounding as preprocessing reads TextGrid times (floor(s * 100 + 0.5)).
    times = [0.0, 0.004, 0.006, 0.014, 1.234, 1.236, 2.999]
    expected = [_seconds_to_frame(t, "test") for t in times]
    got = seconds_to_spans(
        tf.constant([times], tf.float32), tf.constant([times], tf.float32), tf.constant([1000])
    ).numpy()[0]
    np.testing.assert_array_equal(got[:, 0], expected)
    # At least one frame per word; clipped to the utterance's frames.
    got = seconds_to_spans(
        tf.constant([[0.5, 0.5, 3.0, 9.0]]), tf.constant([[0.5, 0.2, 9.0, 9.5]]), tf.constant([400])
    ).numpy()[0]
    np.testing.assert_array_equal(got, [[50, 51], [50, 51], [300, 400], [400, 400]])


def test_serving_vocabulary_keeps_the_most_frequent_first_occurrence():
    vectors = WordVectors(
        ["the", "The", "Dog", "cat", "dog"], np.arange(10, dtype=np.float32).reshape(5, 2)
    )
    words, matrix = serving_vocabulary(vectors, 4)
    assert words == ["the", "dog", "cat"]  # "The" folds into "the"; "dog" (row 4) is cut
    np.testing.assert_array_equal(matrix, [[0, 1], [4, 5], [6, 7], [0, 0]])  # + the OOV row
    with pytest.raises(ValueError, match="vocab_size"):
        serving_vocabulary(vectors, 0)


def test_export_checks_its_arguments(exported, tmp_path):
    model, info = exported
    assert info["vocab_size"] == 20000 and info["word_dim"] == 50
    assert info["class_names"] == list(CLASSES)
    assert info["signatures"] == [SERVING_DEFAULT, PREDICT_WAVEFORM, PREDICT_WAVEFORM_BYTES]
    saved = tf.saved_model.load(info["path"])
    assert sorted(saved.signatures) == sorted(info["signatures"])
    assert info["size_bytes"] > 20000 * 50 * 4  # the vectors live in the SavedModel
    small = WordVectors(["a", "b"], np.ones((2, 50), np.float32))
    with pytest.raises(ValueError, match="3 class names"):
        export_saved_model(model, tmp_path / "1", class_names=["a", "b", "c"], vectors=small)
    with pytest.raises(ValueError, match="8-d but the model takes 50-d"):
        export_saved_model(
            model,
            tmp_path / "1",
            class_names=CLASSES,
            vectors=WordVectors(["a"], np.ones((1, 8), np.float32)),
        )
    with pytest.raises(FileExistsError):
        export_saved_model(model, info["path"], class_names=CLASSES, vectors=small)
    # Nothing half-written is left next to the versions (the staging dir is a dot-name).
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert [p.name for p in Path(info["path"]).parent.iterdir()] == ["1"]


def test_export_to_a_tensorflow_filesystem_url(exported):
    """A TFX Trainer on Vertex / Kubeflow hands over gs://... paths; TF's in-memory ram://
    filesystem stands in for them here (no rename there: written in place)."""
    model, info = exported
    url = "ram://serving-test/cme/1"
    remote = export(model, url)
    assert remote["path"] == url and abs(remote["size_bytes"] - info["size_bytes"]) < 4096
    waveform, result = aligned(ANGRY, KIDS)
    feeds = {
        k: tf.constant(v) for k, v in waveform_inputs([(waveform, *timed_words(result))]).items()
    }
    here = tf.saved_model.load(info["path"]).signatures[PREDICT_WAVEFORM](**feeds)
    there = tf.saved_model.load(url).signatures[PREDICT_WAVEFORM](**feeds)
    np.testing.assert_array_equal(there["probabilities"].numpy(), here["probabilities"].numpy())
    with pytest.raises(FileExistsError):
        export(model, url)


def test_a_seed_ensemble_exports_the_mean_of_its_members(tmp_path):
    from trainer.export import excitation_model, has_excitation
    from trainer.model import average_models, ensemble_members

    members = [small_model(seed) for seed in (0, 1)]
    parsed = records.parse_examples(tf.constant([example_bytes(SAD, DOGS, label="sad")]), 50)
    inputs = records.to_model_inputs(parsed)
    alone = [excitation_model(m)(inputs, training=False) for m in members]
    ensemble = average_models(members)
    assert ensemble_members(ensemble) == members and has_excitation(ensemble)
    assert [m.name for m in members] == ["ensemble_member0", "ensemble_member1"]
    info = export(ensemble, tmp_path / "cme" / "1")
    loaded = tf.saved_model.load(info["path"])
    by_example = loaded.signatures[SERVING_DEFAULT](
        examples=tf.constant([example_bytes(SAD, DOGS, label="sad")])
    )
    mean = (alone[0][0].numpy() + alone[1][0].numpy()) / 2
    np.testing.assert_allclose(by_example["probabilities"].numpy(), mean, atol=1e-5)
    assert not np.allclose(alone[0][0].numpy(), alone[1][0].numpy(), atol=1e-3)
    waveform, result = aligned(SAD, DOGS)
    out = loaded.signatures[PREDICT_WAVEFORM](
        **{
            k: tf.constant(v)
            for k, v in waveform_inputs([(waveform, *timed_words(result))]).items()
        }
    )
    for i, name in ((1, "acoustic_excitation"), (2, "semantic_excitation")):
        expected = (alone[0][i].numpy().mean(-1) + alone[1][i].numpy().mean(-1)) / 2
        np.testing.assert_allclose(out[name].numpy(), expected, atol=1e-4)
    assert average_models(members[:1]) is members[0]
    with pytest.raises(ValueError, match="at least one member"):
        average_models([])


def test_a_calibrated_export_serves_the_temperature_scaled_probabilities(exported, tmp_path):
    """Prior correction, then the temperature, last: both signatures serve
    ``temperature_scaled(prior_corrected(p), T)`` with the same argmax, and the SavedModel
    keeps T."""
    from trainer.calibration import temperature_scaled
    from trainer.metrics import prior_corrected

    model, plain = exported
    counts = [3.0, 1.0, 2.0, 4.0]
    info = export_saved_model(
        model,
        tmp_path / "cme" / "1",
        class_names=CLASSES,
        vectors=glove(),
        vocab_size=plain["vocab_size"],
        prior_class_counts=counts,
        temperature=2.5,
    )
    assert info["temperature"] == 2.5
    examples = tf.constant(
        [example_bytes(SAD, DOGS, label="sad"), example_bytes(ANGRY, KIDS, label="angry")]
    )
    base = tf.saved_model.load(plain["path"]).signatures[SERVING_DEFAULT](examples=examples)
    loaded = tf.saved_model.load(info["path"])
    out = loaded.signatures[SERVING_DEFAULT](examples=examples)
    expected = temperature_scaled(prior_corrected(base["probabilities"].numpy(), counts), 2.5)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    assert (out["class_ids"].numpy() == expected.argmax(-1)).all()
    assert float(loaded.calibration_temperature.numpy()) == 2.5
    assert float(tf.saved_model.load(plain["path"]).calibration_temperature.numpy()) == 1.0
    with pytest.raises(ValueError, match="temperature"):
        export_saved_model(
            model, tmp_path / "cme" / "2", class_names=CLASSES, vectors=glove(), temperature=-1.0
        )
