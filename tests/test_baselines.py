"""Every model variant (the paper's model, its ablations, Table 1's baselines and the CTC-aligned
model) at a tiny size: shapes, padding invariance, save/load, learning; the baseline layers
against NumPy references; serving export of a model without excitation gates.

Every variant is built; the slower checks (padding, save/load, training steps) run once per
distinct graph: variants that differ only in fields the graph does not depend on (the training
loop's, the input pipeline's, the optimiser's) share their representative's checks."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_support import random_batch, unpadded_row

from trainer.config import VARIANTS, variant_config
from trainer.layers import (
    AttentionPooling,
    CTCAlignmentPooling,
    FrameSubsampling,
    IgnoreInputs,
    PairMask,
    QueryAttention,
)
from trainer.model import (
    EMBEDDING_LAYER,
    EXCITATION_LAYER,
    INPUT_NAMES,
    adapt_normalization,
    build_model,
    valid_frames,
)

TINY = dict(
    word_dim=8,
    cnn_filters=(8, 16, 16),
    semantic_dim=16,
    lstm_units=8,
    fcn_units=8,
    class_names=("a", "b", "c"),
)
# The recipe's stochastic parts off, so that two calls of the model agree in training mode too.
QUIET = dict(dropout=0.0, spec_freq_masks=0, spec_time_masks=0)
# The inputs each variant must ignore (everything else is read).
IGNORED = {
    "cnn_lstm_a": {"word_embeddings", "num_words", "word_spans"},
    "lstm_attn_a": {"word_embeddings", "num_words", "word_spans"},
    "lstm_attn_s": {"fbank", "num_frames", "word_spans"},
    "utt_concat": {"word_spans"},
    "attn_fusion": {"word_spans"},
    "mha": {"word_spans"},
    "ctc_align": {"word_spans"},
}


def tiny(name, **overrides):
    return variant_config(name, **{**TINY, **overrides})


# ModelConfig fields the graph build_model makes does not depend on: the optimiser and loss
# settings compile_model reads (lr_schedule and epochs only with steps_per_epoch, which
# build_model does not pass), and fields only the training loop and the input pipeline read.
NOT_IN_GRAPH = frozenset(
    {
        "variant",
        "learning_rate",
        "label_smoothing",
        "weight_decay",
        "lr_schedule",
        "epochs",
        "batch_size",
        "patience",
        "selection",
        "refit",
        "rotate_validation",
        "class_balanced",
        "validation_fraction",
        "speaker_norm",
        "time_stretch",
    }
)


def graph_key(name):
    return tuple(
        (field, repr(value))
        for field, value in sorted(tiny(name).to_dict().items())
        if field not in NOT_IN_GRAPH
    )


def representatives():
    """Variant -> the first variant (in VARIANTS order) with the same graph key."""
    first = {}
    for name in VARIANTS:
        first.setdefault(graph_key(name), name)
    return {name: first[graph_key(name)] for name in VARIANTS}


REPRESENTATIVE = representatives()
GRAPHS = [name for name in VARIANTS if REPRESENTATIVE[name] == name]  # one per distinct graph
_BUILT_GRAPHS = {}  # variant -> graph_json of its model, as test_variant_builds_... built it


def graph_json(model):
    """``model``'s graph (layer configs and connections) as JSON, without the suffixes Keras
    appends to automatic names (``forward_lstm_1``: they count the models built so far)."""
    return re.sub(
        r'"([A-Za-z_]+)_\d+"', r'"\1"', json.dumps(model.get_config(), sort_keys=True, default=repr)
    )


def test_representatives_cover_every_optimiser_and_loss_setting():
    """cme (AdamW, label smoothing) and cme_paper (Adam, none) keep both set-ups trained and
    saved by the per-graph tests."""
    for field in ("weight_decay", "label_smoothing"):
        assert {bool(getattr(tiny(name), field)) for name in GRAPHS} == {
            bool(getattr(tiny(name), field)) for name in VARIANTS
        }, field
    assert len(GRAPHS) < len(VARIANTS)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_builds_with_the_shared_interface(name):
    model = build_model(tiny(name))
    assert set(model.input) == set(INPUT_NAMES)
    embedding = model.get_layer(EMBEDDING_LAYER)
    assert isinstance(embedding, keras.layers.Dense) and embedding.units == 8
    assert model.get_layer("probabilities").units == 3
    probs = model(random_batch(np.random.default_rng(0))).numpy()
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    config = tiny(name)
    assert any(layer.name == EXCITATION_LAYER for layer in model.layers) == (
        config.architecture == "aligned"
    )
    # The per-graph tests below check this variant through its representative: same graph.
    graph = _BUILT_GRAPHS.setdefault(name, graph_json(model))
    representative = REPRESENTATIVE[name]
    if representative != name:
        want = _BUILT_GRAPHS.get(representative) or graph_json(build_model(tiny(representative)))
        assert graph == want, (
            f"{name} builds a different graph from {representative}: a "
            f"field of NOT_IN_GRAPH changes the graph"
        )


@pytest.mark.parametrize("name", GRAPHS)
def test_padding_a_batch_does_not_change_outputs(name):
    rng = np.random.default_rng(1)
    model = build_model(tiny(name))
    batch = random_batch(rng, batch=4, frames=41)  # not a multiple of frame_stride
    base = model(batch).numpy()
    padded = dict(batch)
    padded["fbank"] = np.concatenate([batch["fbank"], rng.normal(size=(4, 19, 40)) * 50], 1).astype(
        np.float32
    )
    padded["word_embeddings"] = np.concatenate(
        [batch["word_embeddings"], rng.normal(size=(4, 3, 8))], 1
    ).astype(np.float32)
    padded["word_spans"] = np.concatenate(
        [batch["word_spans"], rng.integers(0, 40, size=(4, 3, 2))], 1
    ).astype(np.int32)
    np.testing.assert_allclose(model(padded).numpy(), base, rtol=1e-5, atol=1e-5)
    noisy = {k: v.copy() for k, v in batch.items()}
    for b in range(4):
        noisy["fbank"][b, batch["num_frames"][b] :] = 1e3
        noisy["word_embeddings"][b, batch["num_words"][b] :] = -1e3
    np.testing.assert_allclose(model(noisy).numpy(), base, rtol=1e-5, atol=1e-5)
    # Each utterance alone (unpadded) gives its row of the batch.
    for b in range(4):
        single = unpadded_row(batch, b)
        np.testing.assert_allclose(model(single).numpy()[0], base[b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(IGNORED))
def test_inputs_a_variant_does_not_read_change_nothing(name):
    rng = np.random.default_rng(2)
    model = build_model(tiny(name))
    batch = random_batch(rng)
    base = model(batch).numpy()
    other = random_batch(np.random.default_rng(99))
    changed = {k: (other[k] if k in IGNORED[name] else v) for k, v in batch.items()}
    np.testing.assert_array_equal(model(changed).numpy(), base)
    # ... while the inputs it reads do matter.
    read = sorted(set(INPUT_NAMES) - IGNORED[name] - {"num_frames", "num_words"})
    changed = {k: (other[k] if k in read else v) for k, v in batch.items()}
    assert np.abs(model(changed).numpy() - base).max() > 1e-6


@pytest.mark.parametrize("name", GRAPHS)
def test_keras_save_and_load_round_trips(name, tmp_path):
    rng = np.random.default_rng(3)
    model = build_model(tiny(name))
    batch = random_batch(rng)
    adapt_normalization(model, valid_frames(batch["fbank"], batch["num_frames"]))
    want = model(batch).numpy()
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(batch).numpy(), want, rtol=1e-6, atol=1e-7)
    assert reloaded.count_params() == model.count_params()


@pytest.mark.parametrize("name", GRAPHS)
def test_a_few_gradient_steps_lower_the_loss(name):
    rng = np.random.default_rng(4)
    keras.utils.set_random_seed(0)
    model = build_model(tiny(name, learning_rate=1e-2, **QUIET))
    data = random_batch(rng, batch=24)
    labels = rng.integers(0, 3, size=24)
    for i, label in enumerate(labels):  # a label-dependent shift in both modalities
        data["fbank"][i, :, :4] += 1.5 * (label - 1)
        data["word_embeddings"][i, :, 0] += 1.5 * (label - 1)
    adapt_normalization(model, valid_frames(data["fbank"], data["num_frames"]))
    # train_on_batch reports the loss before its update: the first is the initial loss, the
    # last the loss after 12 steps.
    losses = [model.train_on_batch(data, labels, return_dict=True)["loss"] for _ in range(13)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses


def test_semantic_only_model_has_no_normalization_to_adapt():
    model = build_model(tiny("lstm_attn_s"))
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in model.layers)
    adapt_normalization(model, np.ones((5, 40), np.float32))  # nothing to adapt: no error
    with pytest.raises(ValueError, match="non-empty"):
        adapt_normalization(model, np.zeros((0, 40), np.float32))


def test_unsupported_combinations_are_refused():
    with pytest.raises(ValueError, match="reads modality 'acoustic'"):
        build_model(tiny("cnn_lstm_a", modality="semantic"))
    with pytest.raises(ValueError, match="needs architecture 'aligned'"):
        build_model(tiny("mha", alignment="ctc"))


# --- The CTC-aligned model ------------------------------------------------------------------


def test_ctc_loss_is_part_of_the_training_loss():
    rng = np.random.default_rng(5)
    config = tiny("ctc_align", ctc_weight=0.5, label_smoothing=0.0, **QUIET)
    model = build_model(config)
    batch = random_batch(rng)
    labels = rng.integers(0, 3, size=4)
    probs = model(batch, training=True)
    assert len(model.losses) == 1
    ctc = float(model.losses[0])
    assert np.isfinite(ctc) and ctc > 0
    cross_entropy = float(
        keras.losses.sparse_categorical_crossentropy(labels, probs).numpy().mean()
    )
    # The loss Keras trains on (computed before the update) is cross-entropy + the CTC term.
    trained = model.train_on_batch(batch, labels, return_dict=True)["loss"]
    np.testing.assert_allclose(trained, cross_entropy + ctc, rtol=1e-4)
    # ctc_weight scales it: same weights, twice the weight, twice the term.
    heavier = build_model(config.replace(ctc_weight=1.0))
    fresh = build_model(config)
    heavier.set_weights(fresh.get_weights())
    fresh(batch)
    heavier(batch)
    np.testing.assert_allclose(float(heavier.losses[0]), 2 * float(fresh.losses[0]), rtol=1e-5)


def test_ctc_model_ignores_the_spans_and_trains_the_alignment_from_ctc_alone():
    rng = np.random.default_rng(6)
    model = build_model(tiny("ctc_align", **QUIET))
    batch = random_batch(rng)
    layer = model.get_layer("alignment_pooling")
    assert isinstance(layer, CTCAlignmentPooling)
    with tf.GradientTape() as tape:
        model(batch, training=True)
        ctc = tf.add_n(model.losses)
    grads = tape.gradient(ctc, layer.trainable_weights + model.get_layer("conv1").trainable_weights)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


# --- Layers against NumPy references ----------------------------------------------------------


def masked_softmax_reference(scores, length):
    weights = np.zeros_like(scores)
    if length:
        e = np.exp(scores[:length] - scores[:length].max())
        weights[:length] = e / e.sum()
    return weights


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_frame_subsampling_matches_numpy(stride):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 11, 3)).astype(np.float32)
    lengths = np.array([11, 7, 1, 0], np.int32)
    pooled, new_lengths = [t.numpy() for t in FrameSubsampling(stride)([x, lengths])]
    windows = -(-11 // stride)
    assert pooled.shape == (4, windows, 3)
    np.testing.assert_array_equal(new_lengths, -(-lengths // stride))  # ceil
    want = np.zeros_like(pooled)
    for b, n in enumerate(lengths):
        for k in range(-(-n // stride)):
            want[b, k] = x[b, k * stride : min((k + 1) * stride, n)].max(axis=0)
    np.testing.assert_array_equal(pooled, want)
    # Garbage past the lengths, and more padding, change nothing.
    noisy = np.concatenate([x, np.full((4, 5, 3), 1e4, np.float32)], axis=1)
    for b, n in enumerate(lengths):
        noisy[b, n:] = 1e4
    again, _ = FrameSubsampling(stride)([noisy, lengths])
    np.testing.assert_array_equal(again.numpy()[:, :windows], want)
    assert np.all(again.numpy()[:, windows:] == 0.0)
    assert FrameSubsampling(4).compute_output_shape(((None, 10, 3), (None,))) == (
        (None, 3, 3),
        (None,),
    )


def test_attention_pooling_matches_numpy():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2, 0], np.int32)
    layer = AttentionPooling(units=6, return_weights=True)
    layer([x, lengths])
    w, c, v = (
        rng.normal(size=(4, 6)).astype(np.float32),
        rng.normal(size=6).astype(np.float32),
        rng.normal(size=6).astype(np.float32),
    )
    layer.set_weights([w, c, v])
    pooled, weights = [t.numpy() for t in layer([x, lengths])]
    for b, n in enumerate(lengths):
        alpha = masked_softmax_reference(np.tanh(x[b] @ w + c) @ v, n)
        np.testing.assert_allclose(weights[b], alpha, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pooled[b], alpha @ x[b], rtol=1e-5, atol=1e-6)
    assert np.all(pooled[2] == 0.0) and np.all(weights[1, 2:] == 0.0)
    noisy = x.copy()
    noisy[1, 2:] = np.nan  # nothing past a length is even looked at
    np.testing.assert_array_equal(layer([noisy, lengths])[0].numpy(), pooled)


def test_query_attention_matches_numpy():
    rng = np.random.default_rng(9)
    query = rng.normal(size=(3, 4)).astype(np.float32)
    keys = rng.normal(size=(3, 6, 5)).astype(np.float32)
    lengths = np.array([6, 3, 0], np.int32)
    layer = QueryAttention()
    layer([query, keys, lengths])
    kernel = rng.normal(size=(4, 5)).astype(np.float32)
    layer.set_weights([kernel])
    got = layer([query, keys, lengths]).numpy()
    for b, n in enumerate(lengths):
        alpha = masked_softmax_reference(keys[b] @ (query[b] @ kernel), n)
        np.testing.assert_allclose(got[b], alpha @ keys[b], rtol=1e-5, atol=1e-6)
    assert np.all(got[2] == 0.0)


def test_pair_mask_and_ignore_inputs():
    queries, keys = np.zeros((2, 3, 1), np.float32), np.zeros((2, 4, 1), np.float32)
    mask = PairMask()([queries, np.array([2, 0]), keys, np.array([1, 4])]).numpy()
    want = np.zeros((2, 3, 4), bool)
    want[0, :2, :1] = True
    np.testing.assert_array_equal(mask, want)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(IgnoreInputs()([x, np.ones(2), keys]).numpy(), x)


def ctc_reference(log_probs, labels, blank=0):
    """-log p(labels | frames) by the CTC forward algorithm (Graves et al. 2006)."""
    ext = [blank]
    for label in labels:
        ext += [label, blank]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = log_probs[0, blank]
    if len(ext) > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, len(log_probs)):
        new = np.full_like(alpha, -np.inf)
        for s in range(len(ext)):
            terms = [alpha[s]] + ([alpha[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = np.logaddexp.reduce(terms) + log_probs[t, ext[s]]
        alpha = new
    return -np.logaddexp(alpha[-1], alpha[-2] if len(ext) > 1 else -np.inf)


@pytest.fixture
def ctc_inputs():
    rng = np.random.default_rng(10)
    frames = np.abs(rng.normal(size=(3, 9, 4))).astype(np.float32)
    frames[1] -= 0.5  # some negative features: the masked max must not pick a padded 0
    words = rng.normal(size=(3, 4, 5)).astype(np.float32)
    num_frames = np.array([9, 6, 5], np.int32)
    num_words = np.array([3, 4, 0], np.int32)
    return frames, words, num_frames, num_words


def test_ctc_alignment_logits_and_loss_match_numpy(ctc_inputs):
    frames, words, num_frames, num_words = ctc_inputs
    rng = np.random.default_rng(11)
    layer = CTCAlignmentPooling(ctc_weight=2.0)
    layer([frames, words, num_frames, num_words])
    kernel = rng.normal(size=(5, 4)).astype(np.float32)  # W^T: words (5) -> frame space (4)
    w_0, c_0 = rng.normal(size=(4, 1)).astype(np.float32), np.array([0.3], np.float32)
    layer.word_projection.set_weights([kernel])
    layer.blank.set_weights([w_0, c_0])
    logits = layer.alignment_logits(frames, words, num_words).numpy()
    assert logits.shape == (3, 9, 5)
    for b in range(3):
        want = np.concatenate(
            [frames[b] @ w_0 + c_0, frames[b] @ (words[b] @ kernel).T / np.sqrt(4)], axis=1
        )
        n = num_words[b]
        np.testing.assert_allclose(logits[b, :, : 1 + n], want[:, : 1 + n], rtol=1e-5, atol=1e-5)
        assert np.all(logits[b, :, 1 + n :] <= -1e8)
    losses = layer.ctc_loss(tf.constant(logits), num_frames, num_words).numpy()
    for b in range(3):
        t = num_frames[b]
        log_probs = logits[b, :t] - np.logaddexp.reduce(logits[b, :t], axis=1, keepdims=True)
        want = ctc_reference(log_probs.astype(np.float64), list(range(1, num_words[b] + 1))) / t
        if num_words[b] == 0:
            want = 0.0  # no words, nothing to align
        np.testing.assert_allclose(losses[b], want, rtol=1e-4)
    # Fewer frames than words cannot be aligned: loss 0 (and a finite gradient), not inf.
    short = layer.ctc_loss(tf.constant(logits), np.array([2, 6, 5], np.int32), num_words)
    np.testing.assert_allclose(short.numpy(), [0.0, losses[1], 0.0], rtol=1e-6)
    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer.ctc_loss(logits_var, np.array([2, 6, 5], np.int32), num_words))
    grad = tape.gradient(total, logits_var).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[[0, 2]] == 0.0)
    layer([frames, words, num_frames, num_words])
    np.testing.assert_allclose(float(layer.losses[0]), 2.0 * losses.mean(), rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean_max", "mean"])
def test_ctc_alignment_pooling_given_a_fixed_posterior(ctc_inputs, pooling):
    frames, words, num_frames, num_words = ctc_inputs
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(3, 9, 5)).astype(np.float32) * 2
    for b, n in enumerate(num_words):
        logits[b, :, 1 + n :] = -1e9
    layer = CTCAlignmentPooling(pooling=pooling, return_alignment=True)
    layer([frames, words, num_frames, num_words])
    layer.alignment_logits = lambda *args: tf.constant(logits)  # fix the posterior
    pooled, alignment = [t.numpy() for t in layer([frames, words, num_frames, num_words])]
    posterior = np.exp(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True))
    channels = 4 if pooling == "mean" else 8
    assert pooled.shape == (3, 4, channels) and alignment.shape == (3, 4, 9)
    for b in range(3):
        t, n = num_frames[b], num_words[b]
        a = posterior[b, :t, 1:].T  # [M, t]
        np.testing.assert_allclose(alignment[b, :n, :t], a[:n], rtol=1e-5, atol=1e-7)
        assert np.all(alignment[b, :, t:] == 0.0) and np.all(alignment[b, n:] == 0.0)
        mean = a[:n] @ frames[b, :t] / a[:n].sum(axis=1, keepdims=True)
        want = [mean]
        if pooling == "mean_max":
            want.append((a[:n, :, None] * frames[b, None, :t]).max(axis=1))
        np.testing.assert_allclose(
            pooled[b, :n], np.concatenate(want, axis=-1), rtol=1e-5, atol=1e-6
        )
        assert np.all(pooled[b, n:] == 0.0)


def test_ctc_alignment_max_gradient_equals_the_dense_formulation(ctc_inputs):
    """The max goes through gathers at the argmax; its gradient (w.r.t. the frames and the
    alignment logits) equals autodiff of the dense max_t A[m, t] h[t] (no ties here)."""
    frames, words, num_frames, num_words = ctc_inputs
    layer = CTCAlignmentPooling()
    layer([frames, words, num_frames, num_words])
    frames_var = tf.Variable(frames)
    logits_var = tf.Variable(np.random.default_rng(15).normal(size=(3, 9, 5)).astype(np.float32))
    word_mask = np.arange(4)[None, :] < num_words[:, None]

    def masked():
        return tf.where(
            np.concatenate([np.ones((3, 1), bool), word_mask], 1)[:, None, :], logits_var, -1e9
        )

    layer.alignment_logits = lambda *args: masked()
    with tf.GradientTape() as tape:
        got = layer([frames_var, words, num_frames, num_words])[..., 4:]
        loss = tf.reduce_sum(got * np.linspace(-1, 2, 4, dtype=np.float32))
    grads = tape.gradient(loss, [frames_var, logits_var])
    with tf.GradientTape() as tape:
        valid = np.arange(9)[None, :] < num_frames[:, None]
        a = tf.transpose(tf.nn.softmax(masked(), -1)[..., 1:], [0, 2, 1]) * valid[:, None, :]
        product = tf.where(valid[:, None, :, None], a[..., None] * frames_var[:, None], -1e30)
        dense = tf.where(word_mask[..., None], tf.reduce_max(product, axis=2), 0.0)
        loss = tf.reduce_sum(dense * np.linspace(-1, 2, 4, dtype=np.float32))
    want = tape.gradient(loss, [frames_var, logits_var])
    np.testing.assert_allclose(got.numpy(), dense.numpy(), rtol=1e-6, atol=1e-7)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-6)


def test_ctc_alignment_pooling_ignores_padding(ctc_inputs):
    frames, words, num_frames, num_words = ctc_inputs
    layer = CTCAlignmentPooling()
    base = layer([frames, words, num_frames, num_words]).numpy()
    base_loss = float(layer.losses[0])
    rng = np.random.default_rng(13)
    more_frames = np.concatenate([frames, rng.normal(size=(3, 4, 4)) * 100], 1).astype(np.float32)
    more_words = np.concatenate([words, rng.normal(size=(3, 2, 5)) * 100], 1).astype(np.float32)
    padded = layer([more_frames, more_words, num_frames, num_words]).numpy()
    np.testing.assert_allclose(padded[:, :4], base, rtol=1e-5, atol=1e-6)
    assert np.all(padded[:, 4:] == 0.0)
    np.testing.assert_allclose(float(layer.losses[0]), base_loss, rtol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        FrameSubsampling(3),
        AttentionPooling(5, return_weights=True),
        QueryAttention(),
        PairMask(),
        IgnoreInputs(),
        CTCAlignmentPooling("mean", 0.3, return_alignment=True),
    ],
)
def test_new_layers_round_trip_through_config(layer):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


# --- Serving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mha", "ctc_align"])
def test_variant_exports_and_reloads_for_serving(name, tmp_path):
    from preprocessing import features, records
    from preprocessing.embeddings import WordVectors
    from trainer.export import export_saved_model, seconds_to_spans
    from trainer.signature_names import (
        CLASS_OUTPUTS,
        EXCITATION_OUTPUTS,
        PREDICT_WAVEFORM,
        SERVING_DEFAULT,
    )

    rng = np.random.default_rng(14)
    config = tiny(name, class_names=("angry", "happy", "sad"))
    model = build_model(config)
    vocab = ["kids", "are", "talking", "dogs"]
    vectors = WordVectors(vocab, rng.normal(size=(4, 8)).astype(np.float32))
    waveform = (rng.normal(size=16000) * 0.1).astype(np.float32)
    fbank = features.log_mel_filterbank(waveform).numpy()
    adapt_normalization(model, fbank)
    info = export_saved_model(
        model, tmp_path / name / "1", class_names=config.class_names, vectors=vectors, vocab_size=10
    )
    loaded = tf.saved_model.load(info["path"])

    words, starts, ends = ["Kids", "are", "talking"], [0.1, 0.3, 0.5], [0.3, 0.5, 0.9]
    by_waveform = loaded.signatures[PREDICT_WAVEFORM](
        waveform=tf.constant(waveform[None]),
        num_samples=tf.constant([16000]),
        words=tf.constant([words]),
        word_start_s=tf.constant([starts]),
        word_end_s=tf.constant([ends]),
    )
    excitation = set(EXCITATION_OUTPUTS) if name == "ctc_align" else set()
    assert set(by_waveform) == set(CLASS_OUTPUTS) | excitation

    spans = seconds_to_spans(
        tf.constant([starts]), tf.constant([ends]), tf.constant([len(fbank)])
    ).numpy()[0]
    example = records.make_example(
        utterance_id="u",
        speaker="s",
        label=0,
        label_name="angry",
        fold=0,
        fbank=fbank,
        words=[w.lower() for w in words],
        word_embeddings=vectors.matrix[:3],
        word_start=spans[:, 0],
        word_end=spans[:, 1],
        transcript=" ".join(words),
        alignment_source="given",
    ).SerializeToString()
    by_example = loaded.signatures[SERVING_DEFAULT](examples=tf.constant([example]))
    assert set(by_example) == set(CLASS_OUTPUTS)
    keras_probs = model(
        records.to_model_inputs(records.parse_examples(tf.constant([example]), 8)), training=False
    ).numpy()
    np.testing.assert_allclose(by_example["probabilities"].numpy(), keras_probs, atol=1e-5)
    np.testing.assert_allclose(by_waveform["probabilities"].numpy(), keras_probs, atol=1e-4)


def test_client_reads_outputs_without_excitation():
    from serving.client import Utterance, predictions_from_outputs

    outputs = {
        "probabilities": np.array([[0.2, 0.8]]),
        "class_ids": np.array([1]),
        "classes": np.array([b"b"]),
        "class_names": np.array([[b"a", b"b"]]),
    }
    [prediction] = predictions_from_outputs(
        outputs, [Utterance(np.zeros(10, np.float32), ["hi", "there"], [0.0, 0.1], [0.1, 0.2])]
    )
    assert prediction.emotion == "b" and len(prediction.words) == 2
    assert np.isnan(prediction.words[0].acoustic_excitation)
    assert prediction.to_dict()["words"][1]["semantic_excitation"] is None  # JSON null
