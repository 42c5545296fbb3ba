"""Training and inference throughput of the paper-sized CME model on synthetic batches.

    python benchmarks/train_throughput.py --shape ravdess --batch 32 --steps 10
    python benchmarks/train_throughput.py --variant mha     # any trainer.config.VARIANTS name
    python benchmarks/train_throughput.py --variant mha --set frame_stride=8 --set lstm_units=128

Prints one JSON line: impl, variant, params, shape, batch, train_utt_per_s, infer_utt_per_s
(warm-up excluded). Without ``--variant`` the model is ``ModelConfig()`` (the paper's recipe);
a variant brings its whole configuration (e.g. SpecAugment and dropout of the training recipe).
Shapes follow the corpora: RAVDESS ~370 frames / 6 words, IEMOCAP ~450 frames / 11 words,
300-d word vectors as in the paper.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.config import VARIANTS, ModelConfig, variant_config  # noqa: E402
from trainer.model import build_model  # noqa: E402

SHAPES = {"ravdess": (370, 6), "iemocap": (450, 11)}
WORD_DIM = 300


def synthetic_batch(rng: np.random.Generator, batch: int, frames: int, words: int) -> dict:
    edges = np.linspace(20, frames - 20, words + 1).astype(np.int32)
    spans = np.stack([edges[:-1], edges[1:]], axis=-1)
    return {
        "fbank": tf.constant(rng.normal(size=(batch, frames, 40)).astype(np.float32)),
        "num_frames": tf.constant(np.full(batch, frames, np.int32)),
        "word_embeddings": tf.constant(
            rng.normal(size=(batch, words, WORD_DIM)).astype(np.float32)
        ),
        "num_words": tf.constant(np.full(batch, words, np.int32)),
        "word_spans": tf.constant(np.broadcast_to(spans, (batch, words, 2)).copy()),
    }


def parse_override(item: str):
    field, _, value = item.partition("=")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ravdess")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default=None,
        help="benchmark this variant's model (default: ModelConfig())",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a ModelConfig field (VALUE parsed as JSON if it can be)",
    )
    args = parser.parse_args(argv)

    frames, words = SHAPES[args.shape]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    overrides = {"word_dim": WORD_DIM, **dict(parse_override(item) for item in args.set)}
    config = variant_config(args.variant, **overrides) if args.variant else ModelConfig(**overrides)
    model = build_model(config)
    batch = synthetic_batch(rng, args.batch, frames, words)
    labels = tf.constant(rng.integers(0, 4, size=args.batch).astype(np.int32))

    def timed(step, count):
        for _ in range(args.warmup):
            step()
        start = time.perf_counter()
        for _ in range(count):
            step()
        return args.batch * count / (time.perf_counter() - start)

    # Keras' own compiled train step (graph mode), as `fit` runs it.
    train_rate = timed(lambda: model.train_on_batch(batch, labels), args.steps)
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    infer_rate = timed(lambda: infer(batch).numpy(), args.steps)

    result = {
        "impl": "cme-ser/keras-tf",
        "variant": args.variant or "default",
        "params": int(model.count_params()),
        "overrides": {k: v for k, v in overrides.items() if k != "word_dim"},
        "shape": args.shape,
        "batch": args.batch,
        "train_utt_per_s": round(train_rate, 1),
        "infer_utt_per_s": round(infer_rate, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
