"""Word alignment: PocketSphinx forced alignment and recognition on real RAVDESS audio, the
fallbacks, and the TextGrid / wdseg readers."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_support import RAVDESS_SPEECH as RAVDESS
from data_support import needs_speech as needs_ravdess

from preprocessing.alignment import (
    Alignment,
    AlignmentError,
    PocketSphinxAligner,
    WordSpan,
    check_within,
    normalize_transcript,
    read_textgrid,
    read_wdseg,
    voiced_region,
)

STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
# Both statements, four actors (male and female), four emotions, both intensities.
FILES = [
    "Actor_01/03-01-01-01-01-01-01.flac",  # neutral, kids
    "Actor_02/03-01-03-02-02-01-02.flac",  # happy strong, dogs
    "Actor_10/03-01-05-02-01-02-10.flac",  # angry strong, kids
    "Actor_17/03-01-04-01-02-01-17.flac",  # sad, dogs
]


def load(rel):
    samples, rate = sf.read(str(RAVDESS / rel), dtype="float32")
    assert rate == 16000 and samples.ndim == 1
    return samples


def num_frames(samples):
    return 1 + (len(samples) - 400) // 160


def transcript_of(rel):
    return STATEMENTS[Path(rel).name.split("-")[4]]


def assert_valid_spans(words, frames):
    """Non-empty, in order, non-overlapping, inside [0, frames]."""
    assert words
    for w in words:
        assert 0 <= w.start < w.end <= frames, w
    for before, after in zip(words, words[1:]):
        assert before.end <= after.start, (before, after)


@pytest.fixture(scope="module")
def aligner():
    return PocketSphinxAligner()


# ------------------------------------------------------------------------------------------
# Transcripts


def test_normalize_transcript():
    assert normalize_transcript("Kids are talking by the door.") == [
        "kids",
        "are",
        "talking",
        "by",
        "the",
        "door",
    ]
    assert normalize_transcript("Don't STOP, it's \u2018quoted\u2019 well-known O\u2019Brien!") == [
        "don't",
        "stop",
        "it's",
        "quoted",
        "well",
        "known",
        "o'brien",
    ]
    assert normalize_transcript("Oh [LAUGHTER] no <sil> ++BREATHING++ way") == ["oh", "no", "way"]
    assert normalize_transcript("?! ... --") == []
    assert normalize_transcript("") == []


# ------------------------------------------------------------------------------------------
# Forced alignment on real audio


@needs_ravdess
@pytest.mark.parametrize("rel", FILES)
def test_forced_alignment_on_ravdess(aligner, rel):
    samples = load(rel)
    frames = num_frames(samples)
    result = aligner.align(samples, transcript_of(rel))
    assert result.source == "forced"
    assert result.tokens == tuple(normalize_transcript(transcript_of(rel)))
    assert result.oov == () and result.notes == ()
    assert_valid_spans(result.words, frames)
    # RAVDESS starts with about a second of silence (first word at 0.96-1.03 s in these files)
    # and ends with 0.9-1.1 s more.
    assert 80 <= result.words[0].start <= 110
    assert frames - result.words[-1].end >= 70
    speech = result.words[-1].end - result.words[0].start
    assert 100 <= speech <= 300  # 1.0-3.0 s for a six-word sentence
    # Every word gets a plausible duration: at least 30 ms, and the words lie in the voiced part.
    assert all(w.end - w.start >= 3 for w in result.words)
    start, end = voiced_region(samples)
    inside = sum(max(0, min(w.end, end) - max(w.start, start)) for w in result.words)
    assert inside >= 0.9 * sum(w.end - w.start for w in result.words)


@needs_ravdess
def test_forced_alignment_values(aligner):
    """Regression on one file with the pinned pocketsphinx 5.1.1 (spans in 10 ms frames; the
    sentence's voiced region is frames 83-228)."""
    result = aligner.align(load(FILES[0]), transcript_of(FILES[0]))
    expected = [
        ("kids", 96, 123),
        ("are", 123, 128),
        ("talking", 128, 169),
        ("by", 169, 181),
        ("the", 181, 192),
        ("door", 192, 226),
    ]
    for w, (word, start, end) in zip(result.words, expected):
        assert w.word == word
        assert abs(w.start - start) <= 3 and abs(w.end - end) <= 3, (w, start, end)


@needs_ravdess
def test_out_of_dictionary_word(aligner):
    samples = load(FILES[0])
    frames = num_frames(samples)
    plain = aligner.align(samples, transcript_of(FILES[0]))
    result = aligner.align(samples, "Kids are talking by the zorblax door")
    assert result.source == "forced"
    assert result.tokens == ("kids", "are", "talking", "by", "the", "zorblax", "door")
    assert result.oov == ("zorblax",)
    assert any("zorblax" in note for note in result.notes)
    assert_valid_spans(result.words, frames)
    # The words away from the unknown one keep their alignment; "zorblax" sits between "the"
    # and "door", sharing their stretch.
    assert result.words[:4] == plain.words[:4]
    the, zorblax, door = result.words[4:]
    assert the.start == plain.words[4].start and door.end == plain.words[5].end
    assert zorblax.end - zorblax.start >= 5


@needs_ravdess
def test_out_of_dictionary_first_word_reaches_back_to_the_voicing(aligner):
    samples = load(FILES[0])
    result = aligner.align(samples, "Zorblax are talking by the door")
    assert result.source == "forced" and result.oov == ("zorblax",)
    assert_valid_spans(result.words, num_frames(samples))
    assert result.words[0].start == voiced_region(samples)[0]
    assert result.words[1].start > result.words[0].start + 10


@needs_ravdess
def test_no_word_in_dictionary_falls_back_to_an_even_split(aligner):
    samples = load(FILES[0])
    result = aligner.align(samples, "Zorblax qwzx frumious")
    assert result.source == "fallback"
    assert result.tokens == ("zorblax", "qwzx", "frumious")
    assert result.oov == ("zorblax", "qwzx", "frumious")
    start, end = voiced_region(samples)
    assert result.words[0].start == start and result.words[-1].end == end
    lengths = [w.end - w.start for w in result.words]
    assert max(lengths) - min(lengths) <= 1
    assert_valid_spans(result.words, num_frames(samples))


@needs_ravdess
def test_alignment_on_silence_is_rejected_as_implausible(aligner):
    """A screamed take where the aligner puts "door" on the trailing silence: the words
    split the voiced region instead."""
    samples = load("Actor_06/03-01-06-02-01-01-06.flac")
    result = aligner.align(samples, "Kids are talking by the door")
    assert result.source == "fallback"
    assert any("outside the voiced frames" in note for note in result.notes)
    start, end = voiced_region(samples)
    assert result.words[0].start == start and result.words[-1].end == end
    assert_valid_spans(result.words, num_frames(samples))


def test_transcript_without_words_is_an_error(aligner):
    samples = np.zeros(16000, np.float32)
    with pytest.raises(AlignmentError, match="no words"):
        aligner.align(samples, "?! ...")
    with pytest.raises(AlignmentError, match="no words"):
        aligner.align(samples, "")


def test_silence_is_an_error(aligner):
    silence = np.zeros(32000, np.float32)
    with pytest.raises(AlignmentError, match="silent"):
        aligner.align(silence, "Kids are talking by the door")
    with pytest.raises(AlignmentError, match="silent"):
        aligner.recognize(silence)


def test_bad_waveforms_are_errors(aligner):
    with pytest.raises(AlignmentError, match="do not fit"):
        aligner.align(np.full(560, 0.1, np.float32), "kids are talking by the door")  # 2 frames
    with pytest.raises(AlignmentError, match="NaN"):
        aligner.align(np.full(16000, np.nan, np.float32), "kids")
    with pytest.raises(AlignmentError, match="1-D"):
        aligner.align(np.zeros((2, 16000), np.float32), "kids")


# ------------------------------------------------------------------------------------------
# Recognition


@needs_ravdess
@pytest.mark.parametrize("rel", FILES[:2])
def test_recognition_on_ravdess(aligner, rel):
    samples = load(rel)
    result = aligner.recognize(samples)
    assert result.source == "asr"
    assert_valid_spans(result.words, num_frames(samples))
    assert all(w.word == w.word.lower() and w.word.isprintable() for w in result.words)
    assert not any(w.word.startswith(("<", "[", "+")) or "(" in w.word for w in result.words)
    assert 4 <= len(result.words) <= 10
    assert "door" in result.tokens  # the one word the bundled model gets in both


# ------------------------------------------------------------------------------------------
# Data classes and helpers


def test_word_span_and_alignment_validate():
    assert WordSpan("a", np.int64(1), np.int64(2)) == WordSpan("a", 1, 2)
    with pytest.raises(AlignmentError):
        WordSpan("a", 5, 5)
    with pytest.raises(AlignmentError):
        WordSpan("a", -1, 2)
    with pytest.raises(AlignmentError, match="source"):
        Alignment((WordSpan("a", 0, 1),), "guessed")
    with pytest.raises(AlignmentError, match="out of order"):
        Alignment((WordSpan("a", 5, 9), WordSpan("b", 1, 3)), "given")
    given = Alignment([WordSpan("a", 0, 1)], "given")
    assert given.words == (WordSpan("a", 0, 1),) and given.notes == () and given.oov == ()


def test_voiced_region_of_a_burst():
    samples = np.zeros(16000, np.float32)
    samples[4000:8000] = 0.3 * np.sin(np.arange(4000) * 2 * np.pi * 220 / 16000)
    start, end = voiced_region(samples)
    # Frames touching samples 4000-8000: the first starts at 3680 (frame 23), the last at 7840
    # (frame 49).
    assert (start, end) == (23, 50)
    with pytest.raises(AlignmentError, match="silent"):
        voiced_region(np.zeros(16000, np.float32))


# ------------------------------------------------------------------------------------------
# Corpus alignments

TEXTGRID_LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 2.5
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 2.5
            text = "x"
    item [2]:
        class = "IntervalTier"
        name = "Words"
        xmin = 0
        xmax = 2.5
        intervals: size = 6
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = ""
        intervals [2]:
            xmin = 0.5
            xmax = 0.904
            text = "Hello,"
        intervals [3]:
            xmin = 0.904
            xmax = 1.0
            text = "sp"
        intervals [4]:
            xmin = 1.0
            xmax = 1.6
            text = "she said ""don't"""
        intervals [5]:
            xmin = 1.6
            xmax = 2.2
            text = "[item 3]"
        intervals [6]:
            xmin = 2.2
            xmax = 2.5
            text = "SIL"
'''

TEXTGRID_SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
1.5
<exists>
2
"TextTier"
"events"
0
1.5
1
0.7
"click"
"IntervalTier"
"words"
0
1.5
3
0
0.25
"<sil>"
0.25
0.8
"kids"
0.8
1.5
"door"
'''


def test_read_textgrid_long_format(tmp_path):
    path = tmp_path / "long.TextGrid"
    path.write_text(TEXTGRID_LONG)
    assert read_textgrid(path) == [
        WordSpan("hello", 50, 90),  # 0.904 s rounds to frame 90; "sp" and "SIL" are skipped
        # A label of several words shares its interval; quotes are escaped by doubling.
        WordSpan("she", 100, 120),
        WordSpan("said", 120, 140),
        WordSpan("don't", 140, 160),
        # "[item 3]" is an annotation, and the brackets inside the string are not an index.
    ]
    assert read_textgrid(path, tier="PHONES") == [WordSpan("x", 0, 250)]


def test_read_textgrid_short_format_and_utf16(tmp_path):
    path = tmp_path / "short.TextGrid"
    path.write_text(TEXTGRID_SHORT)
    expected = [WordSpan("kids", 25, 80), WordSpan("door", 80, 150)]
    assert read_textgrid(path) == expected
    utf16 = tmp_path / "utf16.TextGrid"
    utf16.write_bytes(TEXTGRID_SHORT.encode("utf-16"))  # Praat's choice for non-ASCII text
    assert read_textgrid(utf16) == expected


def test_read_textgrid_errors(tmp_path):
    path = tmp_path / "grid.TextGrid"
    path.write_text(TEXTGRID_SHORT)
    with pytest.raises(AlignmentError, match="no tier named 'phones'.*'events', 'words'"):
        read_textgrid(path, tier="phones")
    with pytest.raises(AlignmentError, match="point tier"):
        read_textgrid(path, tier="events")
    # Malformed files are errors that name the file.
    truncated = tmp_path / "truncated.TextGrid"
    truncated.write_text(TEXTGRID_LONG[: TEXTGRID_LONG.index('text = "SIL"')])
    with pytest.raises(AlignmentError, match=r"truncated.TextGrid: malformed TextGrid"):
        read_textgrid(truncated)
    overlapping = tmp_path / "overlapping.TextGrid"
    overlapping.write_text(TEXTGRID_LONG.replace("xmin = 1.6\n", "xmin = 1.5\n"))
    with pytest.raises(
        AlignmentError, match=r"overlapping.TextGrid: malformed TextGrid: .*overlap"
    ):
        read_textgrid(overlapping)
    backwards = tmp_path / "backwards.TextGrid"
    backwards.write_text(TEXTGRID_SHORT.replace("0.8\n1.5\n", "1.5\n0.8\n"))
    with pytest.raises(AlignmentError, match=r"backwards.TextGrid: malformed TextGrid: .*start"):
        read_textgrid(backwards)
    other = tmp_path / "other.TextGrid"
    other.write_text('File type = "ooTextFile"\nObject class = "Sound"\n')
    with pytest.raises(AlignmentError, match=r"other.TextGrid: malformed TextGrid"):
        read_textgrid(other)
    with pytest.raises(AlignmentError, match="cannot read"):
        read_textgrid(tmp_path / "missing.TextGrid")


WDSEG = """ SFrm  EFrm    SegAScr Word
     0     32   -1232349 <s>
    33     50    -234567 HELLO(2)
    51     60     -12345 <sil>
    61     70     -23456 ++BREATHING++
    71    104    -345678 I'M
   105    130    -456789 [NOISE]
   131    160    -567890 THERE
   161    199     -11111 </s>
 Total score:    -2884129
"""


def test_read_wdseg(tmp_path):
    path = tmp_path / "Ses01F_impro01_F000.wdseg"
    path.write_text(WDSEG)
    assert read_wdseg(path) == [
        WordSpan("hello", 33, 51),
        WordSpan("i'm", 71, 105),
        WordSpan("there", 131, 161),
    ]
    header_only = tmp_path / "header.wdseg"
    header_only.write_text("SFrm EFrm SegAScr Word\n")
    assert read_wdseg(header_only) == []


def test_read_wdseg_errors(tmp_path):
    empty = tmp_path / "empty.wdseg"
    empty.write_text("")
    with pytest.raises(AlignmentError, match="empty"):
        read_wdseg(empty)
    bad = tmp_path / "bad.wdseg"
    bad.write_text(" SFrm  EFrm    SegAScr Word\n    33   fifty   -1 HELLO\n")
    with pytest.raises(AlignmentError, match=r"bad.wdseg:2: malformed"):
        read_wdseg(bad)
    backwards = tmp_path / "backwards.wdseg"
    backwards.write_text("    50   33   -1 HELLO\n")
    with pytest.raises(AlignmentError, match="bad frames"):
        read_wdseg(backwards)


def test_check_within(tmp_path):
    words = [WordSpan("kids", 25, 80), WordSpan("door", 80, 150)]
    assert check_within(words, 150) == words
    # The filterbank drops the last partial window: a couple of frames of overhang are clipped.
    assert check_within(words, 148) == [WordSpan("kids", 25, 80), WordSpan("door", 80, 148)]
    assert check_within([WordSpan("end", 149, 150)], 148) == [WordSpan("end", 147, 148)]
    path = tmp_path / "long.TextGrid"
    path.write_text(TEXTGRID_SHORT)
    with pytest.raises(AlignmentError) as error:
        check_within(read_textgrid(path), 120)  # a 1.2 s recording
    message = str(error.value)
    assert "'door'" in message and "0.80-1.50 s" in message and "1.20 s" in message
    with pytest.raises(AlignmentError, match="out of order"):
        check_within([WordSpan("b", 50, 60), WordSpan("a", 10, 20)], 100)
    with pytest.raises(AlignmentError, match="no audio frames"):
        check_within(words, 0)
