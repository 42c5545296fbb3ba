"""Long recordings with known answers: utterances joined by silences of random length, with
background noise at a chosen signal-to-noise ratio.

A timeline of emotions is scored against such a recording: where each utterance's speech
starts and ends (its forced alignment's first and last word, or its voiced frames) and its
label are known. The tests, ``benchmarks/timeline.py`` and the README's picture build them from
RAVDESS at run time (never stored):

    python -m preprocessing.joined_recording --out demo.flac --actors 01,02 --snr 20

writes ``demo.flac``, its transcript ``demo.vtt`` (WebVTT, one cue per utterance) and its
segment labels ``demo.segments.csv`` (``path,start,end,label,transcript``: the manifest of
``cme-ser evaluate --dataset segments``).

Noise is pink (power falling 3 dB per octave, like most room and street noise more than white
noise), from a seeded generator, at ``snr_db`` below each utterance's own speech: under a file,
``10 log10(P_speech / P_noise) = snr_db`` with ``P_speech`` the mean power of that utterance's
speech span, as noisy-speech benchmarks mix each utterance; over a silence the noise level
glides from the level under one file to the next. (RAVDESS's levels span 30 dB, from a shouted
angry sentence to a whispered sad one: one noise level for all would put the quiet ones far
below 0 dB.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from preprocessing.audio import load_audio
from preprocessing.features import FRAMES_PER_SECOND, SAMPLE_RATE

DEFAULT_SILENCE_SECONDS = (0.5, 3.0)  # silence inserted between two files, uniform in this
# Pink noise: white noise through this IIR filter (-3 dB/octave within 0.5 dB over 10 Hz to
# 8 kHz; J. O. Smith, "Spectral Audio Signal Processing", pink noise example).
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


@dataclasses.dataclass(frozen=True)
class Placed:
    """One utterance in the recording: its speech from ``start_s`` to ``end_s`` (seconds in the
    recording), its label and transcript, and the file it came from."""

    start_s: float
    end_s: float
    label: str
    transcript: str
    source: str
    file_start_s: float  # where the whole file begins in the recording


def speech_span(waveform: np.ndarray, transcript: Optional[str], aligner=None) -> Tuple[int, int]:
    """Samples ``[first, end)`` of the speech in one utterance: from its forced alignment's first
    word to its last (``aligner`` given), else its voiced frames
    (``preprocessing.alignment.voiced_region``)."""
    from preprocessing.alignment import voiced_region

    step = SAMPLE_RATE // FRAMES_PER_SECOND
    if aligner is not None and transcript:
        words = aligner.align(waveform, transcript).words
        return words[0].start * step, min(words[-1].end * step, waveform.size)
    first, end = voiced_region(waveform)
    return first * step, min(end * step, waveform.size)


def pink_noise(rng: np.random.Generator, samples: int, state=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(pink noise [samples] of unit RMS, filter state)``; pass the state back in to continue
    the same noise (each piece is scaled to unit RMS on its own)."""
    if state is None:
        state = np.zeros(len(_PINK_A) - 1)
    out, state = lfilter(_PINK_B, _PINK_A, rng.standard_normal(samples), zi=state)
    return out / max(float(np.std(out)), 1e-12), state


def join_utterances(
    utterances: Sequence[Tuple[Union[str, os.PathLike], str, str]],
    out_path: Union[str, os.PathLike],
    *,
    snr_db: Optional[float],
    seed: int = 0,
    silence_seconds: Tuple[float, float] = DEFAULT_SILENCE_SECONDS,
    aligner=None,
    subtype: Optional[str] = None,
) -> List[Placed]:
    """Writes the files of ``utterances`` (``(path, label, transcript)``) one after the other,
    each followed by a silence of uniform random length in ``silence_seconds``, with pink noise
    at ``snr_db`` over the whole recording (None: no noise), to ``out_path`` (16 kHz mono; the
    format from its extension). Returns where each utterance's speech is.

    Memory holds one utterance at a time (two passes: speech power, then writing)."""
    rng = np.random.default_rng(seed)
    spans, powers = [], []
    for path, _, transcript in utterances:  # pass 1: speech spans and their power
        waveform, _ = load_audio(path)
        first, end = speech_span(waveform, transcript, aligner)
        spans.append((first, end, waveform.size))
        powers.append(float(np.mean(waveform[first:end].astype(np.float64) ** 2)))
    gaps = rng.uniform(*silence_seconds, size=len(utterances))
    levels = [0.0 if snr_db is None else np.sqrt(p / 10 ** (snr_db / 10)) for p in powers]
    noise_rng, state = np.random.default_rng(seed + 1), None
    placed, position = [], 0
    with sf.SoundFile(
        str(out_path),
        "w",
        samplerate=SAMPLE_RATE,
        channels=1,
        **({"subtype": subtype} if subtype else {}),
    ) as out:
        for i, ((path, label, transcript), (first, end, size), gap) in enumerate(
            zip(utterances, spans, gaps)
        ):
            waveform, _ = load_audio(path)
            silence = int(round(gap * SAMPLE_RATE))
            piece = np.concatenate([waveform, np.zeros(silence, np.float32)]).astype(np.float64)
            if snr_db is not None:
                after = levels[i + 1] if i + 1 < len(levels) else levels[i]
                gain = np.concatenate(
                    [np.full(size, levels[i]), np.linspace(levels[i], after, silence)]
                )
                noise, state = pink_noise(noise_rng, piece.size, state)
                piece += gain * noise
            out.write(np.clip(piece, -1.0, 1.0).astype(np.float32))
            placed.append(
                Placed(
                    (position + first) / SAMPLE_RATE,
                    (position + end) / SAMPLE_RATE,
                    label,
                    transcript,
                    str(path),
                    position / SAMPLE_RATE,
                )
            )
            position += piece.size
    return placed


def write_segments_csv(
    placed: Sequence[Placed],
    path: Union[str, os.PathLike],
    *,
    audio: Optional[Union[str, os.PathLike]] = None,
    transcript: Optional[Union[str, os.PathLike]] = None,
) -> None:
    """``start,end,label`` per utterance (seconds, 3 decimals); with ``audio`` (and
    ``transcript``), ``path,start,end,label[,transcript]``, the names relative to the CSV: the
    manifest ``cme-ser evaluate --dataset segments`` reads."""
    if audio is None:
        lines = ["start,end,label"] + [f"{p.start_s:.3f},{p.end_s:.3f},{p.label}" for p in placed]
    else:
        base = Path(path).parent
        name = os.path.relpath(audio, base)
        extra = f",{os.path.relpath(transcript, base)}" if transcript else ""
        lines = ["path,start,end,label" + (",transcript" if transcript else "")] + [
            f"{name},{p.start_s:.3f},{p.end_s:.3f},{p.label}{extra}" for p in placed
        ]
    Path(path).write_text("\n".join(lines) + "\n")


def write_vtt(placed: Sequence[Placed], path: Union[str, os.PathLike]) -> None:
    """A WebVTT transcript: one cue per utterance over its speech span."""

    def stamp(seconds: float) -> str:
        ms = int(round(seconds * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    cues = [f"{stamp(p.start_s)} --> {stamp(p.end_s)}\n{p.transcript}" for p in placed]
    Path(path).write_text("WEBVTT\n\n" + "\n\n".join(cues) + "\n")


def ravdess_utterances(
    data_dir,
    actors: Sequence[str],
    classes: Sequence[str],
    *,
    seed: int = 0,
    count: Optional[int] = None,
) -> List[Tuple[str, str, str]]:
    """``(path, label, transcript)`` of the RAVDESS speech files of ``actors`` with a label in
    ``classes``, shuffled (seeded), the first ``count`` (None: all)."""
    from preprocessing import corpora

    items, _ = corpora.partition(corpora.items("ravdess", data_dir, list(classes)))
    chosen = [u for u in items if u.speaker.split("_")[-1] in {a.zfill(2) for a in actors}]
    chosen.sort(key=lambda u: u.utterance_id)
    order = np.random.default_rng(seed).permutation(len(chosen))
    picked = [chosen[i] for i in order][:count]
    return [(u.audio_path, u.label_name, u.transcript) for u in picked]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from preprocessing.corpora import DEFAULT_CLASSES
    from preprocessing.corpus_options import find_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the recording (.flac, .wav, .ogg, .mp3)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="RAVDESS speech (default: the usual lookup, $CME_SER_DATA, ...)",
    )
    parser.add_argument("--actors", default="01", help="comma-separated actor numbers")
    parser.add_argument("--count", type=int, default=None, help="utterances (default: all)")
    parser.add_argument("--snr", type=float, default=20.0, help="dB; 'inf' for no noise")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = find_data_dir(args.data_dir)
    utterances = ravdess_utterances(
        data, args.actors.split(","), DEFAULT_CLASSES, seed=args.seed, count=args.count
    )
    from preprocessing.alignment import PocketSphinxAligner

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    placed = join_utterances(
        utterances,
        out,
        snr_db=None if np.isinf(args.snr) else args.snr,
        seed=args.seed,
        aligner=PocketSphinxAligner(),
    )
    write_vtt(placed, out.with_suffix(".vtt"))
    write_segments_csv(
        placed, out.with_suffix(".segments.csv"), audio=out, transcript=out.with_suffix(".vtt")
    )
    print(
        f"{out}: {len(placed)} utterances; labels {out.with_suffix('.segments.csv')}, "
        f"transcript {out.with_suffix('.vtt')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
