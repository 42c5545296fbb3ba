"""The input checks of ``predict_waveform`` / ``predict_waveform_bytes`` live in the exported graph
(``trainer.export.check_waveform_inputs``): through a loaded SavedModel (what TF Serving runs),
every rule refuses its bad input with InvalidArgumentError and the rule's message, good inputs
give the Keras model's probabilities, the checks survive output pruning (a TF1 session fetching
one output, as TF Serving does with an output filter), the batcher does not let one bad request
fail or hide among good ones, and `cme-ser serve` answers 400 with the rule's message."""

import http.client
import json
import re
import threading

import numpy as np
import pytest
import tensorflow as tf
from serving_support import (
    CLASSES,
    VOCAB_SIZE,
    glove,
    needs_ravdess,
    serve_argv,
    server_stderr,
    start_server,
    stop_server,
    waveform_inputs,
)

from preprocessing import features
from serving.batching import Batcher, merge, policy_for
from serving.repository import load_version
from serving.status import ServingError
from trainer.export import (
    PREDICT_WAVEFORM,
    PREDICT_WAVEFORM_BYTES,
    WARMUP_WORDS,
    seconds_to_spans,
    serving_vocabulary,
    synthetic_utterance,
)

pytestmark = needs_ravdess

SECONDS = 1.0
WAVE = synthetic_utterance(SECONDS)  # 16000 samples, no data needed
N = WAVE.size
WORDS = list(WARMUP_WORDS[:3])  # "kids are talking"
STARTS = [0.1, 0.4, 0.6]
ENDS = [0.4, 0.6, 0.9]


@pytest.fixture(scope="module")
def exported(small_model_export):
    model, base, info = small_model_export  # conftest: small_model() exported once per session
    return model, base, tf.saved_model.load(info["path"])


def good():
    return waveform_inputs([(WAVE, WORDS, STARTS, ENDS)])


def as_bytes(feeds):
    """The same request for predict_waveform_bytes: each row's samples as float32 bytes."""
    feeds = dict(feeds)
    rows = feeds.pop("waveform")
    feeds["waveform_bytes"] = np.array([row.astype("<f4").tobytes() for row in rows], dtype=object)
    return feeds


def replaced(**changes):
    return {**good(), **changes}


def at(values, index, value):
    """A [1, M] float32 row of ``values`` with ``values[index]`` replaced."""
    row = np.array([values], np.float32)
    row[0, index] = value
    return row


def run(loaded, signature, feeds):
    out = loaded.signatures[signature](
        **{k: tf.constant(v, tf.string if v.dtype == object else None) for k, v in feeds.items()}
    )
    return {k: v.numpy() for k, v in out.items()}


NAN_WAVE = WAVE.copy()
NAN_WAVE[7] = np.nan
# (id, bad feeds of predict_waveform, the rule, "[source]" replaced by the signature's samples
# input, then the offending values as TF prints them).
RULES = [
    (
        "empty batch",
        {k: v[:0] for k, v in good().items()},
        "a request needs at least one [source] row (the batch is empty)",
        " [[source] shape:] [0",
    ),
    (
        "num_samples rows",
        replaced(num_samples=np.array([N, N], np.int32)),
        "num_samples must be [batch]: one length per [source] row",
        " [num_samples shape:] [2] [[source] rows:] [1]",
    ),
    (
        "words rows",
        replaced(words=np.array([WORDS, WORDS], dtype=object)),
        "words must be [batch, words]: one row of words per [source] row",
        " [words shape:] [2 3] [[source] rows:] [1]",
    ),
    (
        "start times shape",
        replaced(word_start_s=np.array([STARTS[:2]], np.float32)),
        "word_start_s must have the shape of words: one time per word slot (pad words with empty "
        "strings and times with 0)",
        " [word_start_s shape:] [1 2] [words shape:] [1 3]",
    ),
    (
        "end times shape",
        replaced(word_end_s=np.array([ENDS + [1.0]], np.float32)),
        "word_end_s must have the shape of words: one time per word slot (pad words with empty "
        "strings and times with 0)",
        " [word_end_s shape:] [1 4] [words shape:] [1 3]",
    ),
    (
        "shorter than a frame",
        replaced(num_samples=np.array([399], np.int32)),
        "num_samples must be at least 400 (one 25 ms frame at 16 kHz)",
        " [num_samples:] [399]",
    ),
    (
        "more than the row",
        replaced(num_samples=np.array([N + 1], np.int32)),
        "num_samples must be at most the samples in its [source] row",
        f" [num_samples:] [{N + 1}] [samples per row:] [{N}]",
    ),
    (
        "NaN sample",
        replaced(waveform=NAN_WAVE[None]),
        "[source] samples must be finite (16 kHz, in [-1, 1])",
        " [[row, sample] not finite:] [[0 7]]",
    ),
    (
        "no words",
        replaced(words=np.array([["", "", ""]], dtype=object)),
        "every row needs at least one word (words[b][0] must not be empty)",
        " [rows without words:] [[0]]",
    ),
    (
        "a gap in the words",
        replaced(words=np.array([["kids", "", "talking"]], dtype=object)),
        "words must be padded with empty strings only after the last word",
        " [[row, slot] of an empty word before a word:] [[0 1]]",
    ),
    (
        "infinite time",
        replaced(word_end_s=at(ENDS, 2, np.inf)),
        "word_start_s and word_end_s must be finite (seconds)",
        " [[row, slot] not finite:] [[0 2]]",
    ),
    # Padding slots are times too: a NaN there is refused (it is not a number of seconds).
    (
        "NaN time in a padding slot",
        replaced(
            words=np.array([["kids", "are", ""]], dtype=object), word_start_s=at(STARTS, 2, np.nan)
        ),
        "word_start_s and word_end_s must be finite (seconds)",
        " [[row, slot] not finite:] [[0 2]]",
    ),
    (
        "negative start",
        replaced(word_start_s=at(STARTS, 0, -0.25)),
        "word_start_s must be >= 0 (seconds from the start of the audio)",
        " [[row, slot]:] [[0 0]] [word_start_s:] [-0.25]",
    ),
    (
        "ends before it starts",
        replaced(word_end_s=at(ENDS, 1, 0.25)),
        "word_end_s must be >= word_start_s (a word cannot end before it starts)",
        " [[row, slot]:] [[0 1]] [word_start_s:] [0.4] [word_end_s:] [0.25]",
    ),
    (
        "starts after the audio",
        replaced(word_start_s=at(STARTS, 2, 1.5), word_end_s=at(ENDS, 2, 2.0)),
        "word_start_s must be at most num_samples / 16000 (a word must start inside the audio)",
        " [[row, slot]:] [[0 2]] [word_start_s:] [1.5] [audio seconds:] [1]",
    ),
]


def expected_message(rule, data, source):
    return "assertion failed: [" + (rule + "]" + data).replace("[source]", source)


@pytest.mark.parametrize(
    "signature,source", [(PREDICT_WAVEFORM, "waveform"), (PREDICT_WAVEFORM_BYTES, "waveform_bytes")]
)
@pytest.mark.parametrize("case,feeds,rule,data", RULES, ids=[r[0] for r in RULES])
def test_each_rule_refuses_its_bad_input(exported, signature, source, case, feeds, rule, data):
    _, _, loaded = exported
    if signature == PREDICT_WAVEFORM_BYTES:
        feeds = as_bytes(feeds)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        run(loaded, signature, feeds)
    message = error.value.message
    assert expected_message(rule, data, source) in message, message


@pytest.mark.parametrize(
    "raw,num_samples,message",
    [
        (
            WAVE.astype("<f4").tobytes()[:-2],
            N - 1,
            "assertion failed: [waveform_bytes rows must be a whole number of float32 samples "
            f"(4 bytes each, little-endian)] [bytes per row:] [{4 * N - 2}]",
        ),
        (
            b"",
            400,
            "assertion failed: [waveform_bytes rows must not be empty (0 samples)] "
            "[bytes per row:] [0]",
        ),
    ],
    ids=["partial sample", "empty row"],
)
def test_bytes_rules(exported, raw, num_samples, message):
    _, _, loaded = exported
    feeds = as_bytes(replaced(num_samples=np.array([num_samples], np.int32)))
    feeds["waveform_bytes"] = np.array([raw], dtype=object)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        run(loaded, PREDICT_WAVEFORM_BYTES, feeds)
    assert message + "\n" in error.value.message, error.value.message


def test_the_first_rule_broken_is_the_one_reported(exported):
    """A NaN start breaks "finite" and would also fail "start <= end" (NaN compares false):
    the checks run in order, so the answer is always the first."""
    _, _, loaded = exported
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape("[word_start_s and word_end_s must be finite"),
    ):
        run(loaded, PREDICT_WAVEFORM, replaced(word_start_s=at(STARTS, 0, np.nan)))


def keras_probabilities(model, feeds):
    """The Keras model on the inputs predict_waveform computes (the conventions of the
    trainer.export docstring), built here from preprocessing's functions."""
    fbank = features.log_mel_filterbank(tf.constant(feeds["waveform"]))
    num_frames = tf.minimum(features.num_frames_for(feeds["num_samples"]), fbank.shape[1])
    words, matrix = serving_vocabulary(glove(), VOCAB_SIZE)
    index = {w: i for i, w in enumerate(words)}
    rows = [[index.get(w.decode().lower(), len(words)) for w in row] for row in feeds["words"]]
    inputs = {
        "fbank": fbank,
        "num_frames": num_frames,
        "word_embeddings": tf.constant(matrix[np.array(rows)]),
        "num_words": tf.constant((feeds["words"] != b"").sum(axis=1), tf.int32),
        "word_spans": seconds_to_spans(
            tf.constant(feeds["word_start_s"]), tf.constant(feeds["word_end_s"]), num_frames
        ),
    }
    return model(inputs, training=False).numpy()


def test_good_inputs_give_the_keras_models_probabilities(exported):
    model, _, loaded = exported
    # Two rows of different lengths and word counts (padded), the edges of every rule included:
    # a 400-sample row, a word starting exactly at the end of the audio, start == end, start 0.
    short = WAVE[: features.FRAME_LENGTH]
    feeds = waveform_inputs(
        [
            (WAVE, WORDS, STARTS, ENDS),
            (short, ["the", "door"], [0.0, short.size / 16000], [0.0, short.size / 16000]),
        ]
    )
    expected = keras_probabilities(model, feeds)
    by_waveform = run(loaded, PREDICT_WAVEFORM, feeds)
    np.testing.assert_allclose(by_waveform["probabilities"], expected, atol=1e-6)
    by_bytes = run(loaded, PREDICT_WAVEFORM_BYTES, as_bytes(feeds))
    np.testing.assert_array_equal(by_bytes["probabilities"], by_waveform["probabilities"])
    np.testing.assert_array_equal(
        by_bytes["semantic_excitation"], by_waveform["semantic_excitation"]
    )
    # Each row alone, unpadded: the same answer.
    alone = run(loaded, PREDICT_WAVEFORM, waveform_inputs([(WAVE, WORDS, STARTS, ENDS)]))
    np.testing.assert_allclose(
        alone["probabilities"][0], by_waveform["probabilities"][0], atol=1e-6
    )


def test_the_checks_survive_pruning_in_a_tf1_session(exported):
    """TF Serving runs the SavedModel's MetaGraph in a Session (Grappler on) and fetches only
    the outputs asked for: fetching ``class_names`` alone (it needs no audio feature, only the
    batch size) still runs the checks."""
    _, base, _ = exported
    bad = replaced(word_start_s=at(STARTS, 0, -1.0))
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(base / "1"))
        for name, feeds in ((PREDICT_WAVEFORM, bad), (PREDICT_WAVEFORM_BYTES, as_bytes(bad))):
            signature = meta.signature_def[name]
            feed = {signature.inputs[k].name: v for k, v in feeds.items()}
            fetch = signature.outputs["class_names"].name
            with pytest.raises(
                tf.errors.InvalidArgumentError, match=re.escape("[word_start_s must be >= 0")
            ):
                session.run(fetch, feed)
            fixed = {
                signature.inputs[k].name: v
                for k, v in (good() if name == PREDICT_WAVEFORM else as_bytes(good())).items()
            }
            assert session.run(fetch, fixed).tolist() == [[c.encode() for c in CLASSES]]


# ----------------------------------------------------------------------------------------------
# Serving: the batcher and `cme-ser serve`


@pytest.fixture(scope="module")
def version(exported):
    _, base, _ = exported
    return load_version(1, base / "1")


def run_together(batcher, version, signature, requests):
    """Submits ``requests`` at once from one thread each; their outputs or ServingErrors."""
    results = [None] * len(requests)

    def one(i):
        try:
            results[i] = batcher.run(version, signature, requests[i])
        except ServingError as error:
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_bad_request_batched_with_a_good_one_fails_alone(version):
    signature = version.signatures[PREDICT_WAVEFORM]
    good_request = waveform_inputs([(WAVE, WORDS, STARTS, ENDS)])
    bad_request = replaced(waveform=NAN_WAVE[None])
    alone = signature.run(good_request)
    # A batch goes when it holds max_batch_size rows: the two requests are merged (the long
    # timeout only bounds the wait).
    batcher = Batcher(max_batch_size=2, timeout_s=60.0)
    try:
        answer, error = run_together(batcher, version, signature, [good_request, bad_request])
    finally:
        batcher.close()
    assert (batcher.batches, batcher.requests, batcher.merge_failures) == (1, 2, 1)
    np.testing.assert_array_equal(answer["probabilities"], alone["probabilities"])
    assert isinstance(error, ServingError) and error.code == "INVALID_ARGUMENT"
    assert "assertion failed: [waveform samples must be finite" in error.message


def test_padding_cannot_hide_a_bad_request(version):
    """num_samples beyond its own waveform passes once the waveform is zero padded next to a
    longer one; the batcher runs such a request alone, so the graph refuses it."""
    signature = version.signatures[PREDICT_WAVEFORM]
    policy = policy_for(signature)
    too_long = waveform_inputs([(WAVE[:8000], WORDS[:1], STARTS[:1], ENDS[:1])])
    too_long["num_samples"] = np.array([12000], np.int32)
    longer = waveform_inputs([(WAVE, WORDS, STARTS, ENDS)])
    hidden = signature.run(merge([too_long, longer], policy))  # what merging would answer
    assert hidden["probabilities"].shape == (2, 4)
    # An end time more than there are words: padding the words would make them agree.
    ragged = waveform_inputs([(WAVE, WORDS[:2], STARTS[:2], ENDS[:2])])
    ragged["word_end_s"] = np.array([ENDS], np.float32)
    assert signature.run(merge([ragged, longer], policy))["probabilities"].shape == (2, 4)

    batcher = Batcher(max_batch_size=2, timeout_s=60.0)
    try:
        for request, rule in (
            (
                too_long,
                "num_samples must be at most the samples in its "
                "waveform row] [num_samples:] [12000] [samples per "
                "row:] [8000]",
            ),
            (ragged, "word_end_s must have the shape of words"),
        ):
            with pytest.raises(ServingError) as error:
                batcher.run(version, signature, request)
            assert error.value.code == "INVALID_ARGUMENT"
            assert "assertion failed: [" + rule in error.value.message, error.value.message
    finally:
        batcher.close()
    assert batcher.batches == 0  # run alone, never queued


def test_cme_ser_serve_answers_400_with_the_rules_message(exported):
    _, base, _ = exported
    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0", "--grpc-port", "-1", "--enable-batching")
    )
    try:
        port = int(url.rsplit(":", 1)[1])

        def predict(signature, inputs):
            columns = {k: v.tolist() for k, v in inputs.items() if k != "words"}
            columns["words"] = [[w.decode() for w in row] for row in inputs["words"]]
            body = {"signature_name": signature, "inputs": columns}
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                connection.request("POST", "/v1/models/cme:predict", json.dumps(body))
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        status, body = predict(PREDICT_WAVEFORM, replaced(num_samples=np.array([300], np.int32)))
        assert status == 400, body
        assert (
            "assertion failed: [num_samples must be at least 400 (one 25 ms frame at 16 kHz)] "
            "[num_samples:] [300]"
        ) in body["error"], body
        status, body = predict(PREDICT_WAVEFORM, good())
        assert status == 200 and len(body["outputs"]["probabilities"][0]) == 4, body
    finally:
        assert stop_server(process) == 0, server_stderr(process)[-5000:]
