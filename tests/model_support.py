"""Helpers of the model tests (a support module: no tests here, imported by test_model and
test_baselines): random padded input batches and single rows of them."""

import numpy as np


def unpadded_row(batch, b):
    """Utterance ``b`` of a padded batch, alone and without padding (a batch of one)."""
    n, m = batch["num_frames"][b], batch["num_words"][b]
    return {
        "fbank": batch["fbank"][b : b + 1, :n],
        "num_frames": batch["num_frames"][b : b + 1],
        "word_embeddings": batch["word_embeddings"][b : b + 1, :m],
        "num_words": batch["num_words"][b : b + 1],
        "word_spans": batch["word_spans"][b : b + 1, :m],
    }


def random_batch(rng, batch=4, frames=30, words=5, word_dim=8):
    num_frames = rng.integers(10, frames + 1, size=batch).astype(np.int32)
    num_words = rng.integers(1, words + 1, size=batch).astype(np.int32)
    spans = np.zeros((batch, words, 2), np.int32)
    for b in range(batch):
        edges = np.sort(rng.choice(np.arange(num_frames[b] + 1), num_words[b] + 1, replace=False))
        spans[b, : num_words[b], 0] = edges[:-1]
        spans[b, : num_words[b], 1] = edges[1:]
    return {
        "fbank": rng.normal(size=(batch, frames, 40)).astype(np.float32),
        "num_frames": num_frames,
        "word_embeddings": rng.normal(size=(batch, words, word_dim)).astype(np.float32),
        "num_words": num_words,
        "word_spans": spans,
    }
