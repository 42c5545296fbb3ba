"""Corpus adapters: each turns a corpus on disk into one ``Utterance`` per labelled recording.

Adapters yield ``Utterance`` and ``Rejected`` items in a deterministic order; a ``Rejected`` is
a file or row that looks like it belongs to the corpus but cannot become an utterance (a badly
named file, a manifest row with an unknown label). Utterances of classes that were not asked
for are skipped without a ``Rejected``: leaving them out is the caller's choice, not a defect.
Adapters do not open audio files; decoding (and its errors) is ``preprocessing.audio``'s job.

``assign_folds`` maps speakers to speaker-independent cross-validation folds.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

# The four emotion classes of the usual IEMOCAP / RAVDESS setting: the classes corpora keep and
# the model predicts unless told otherwise (trainer.config imports it from here).
DEFAULT_CLASSES: Tuple[str, ...] = ("angry", "happy", "neutral", "sad")

PathLike = Union[str, os.PathLike]
CORPUS_STAGE = "corpus"
ALIGNMENT_FORMATS = ("textgrid", "wdseg")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One labelled recording.

    ``speaker`` is what folds never split; ``group`` an optional coarser unit (IEMOCAP session);
    ``gender`` is "F", "M" or None. ``transcript`` None means unknown (to be recognised);
    ``alignment_path`` is a word alignment in ``alignment_format`` ("textgrid" | "wdseg").
    ``channel`` is how it was produced where a corpus has more than one (RAVDESS: "speech" or
    "song"), else None.
    """

    utterance_id: str
    audio_path: str
    speaker: str
    label_name: str
    transcript: Optional[str]
    alignment_path: Optional[str] = None
    alignment_format: Optional[str] = None
    group: Optional[str] = None
    gender: Optional[str] = None
    channel: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A file or row that could not become an utterance, and why."""

    utterance_id: str
    path: str
    stage: str
    reason: str


Item = Union[Utterance, Rejected]


def partition(items: Iterable[Item]) -> Tuple[List[Utterance], List[Rejected]]:
    """Split an adapter's output into (utterances, rejected), keeping order."""
    utterances, rejected = [], []
    for item in items:
        (rejected if isinstance(item, Rejected) else utterances).append(item)
    return utterances, rejected


def _check_classes(classes: Sequence[str], valid: Sequence[str], corpus: str) -> Tuple[str, ...]:
    classes = tuple(classes)
    unknown = [c for c in classes if c not in valid]
    if unknown or not classes:
        raise ValueError(
            f"{corpus}: unknown class names {unknown} (valid: {', '.join(valid)})"
            if unknown
            else f"{corpus}: no classes given (valid: {', '.join(valid)})"
        )
    return classes


# ---------------------------------------------------------------------------------------------
# RAVDESS

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
# Vocal channel code -> name. Song has emotions 01-06 only (no disgust, no surprise).
RAVDESS_CHANNELS = {"01": "speech", "02": "song"}
DEFAULT_CHANNELS = ("speech",)
# The channel whose utterances size a speaker when folds are dealt (see ``assign_folds``).
PRIMARY_CHANNEL = "speech"
# Augmented copies (preprocessing.augment) of a channel's records are records of the channel
# ``<channel>_aug`` (speech -> speech_aug), with the id ``<utterance id>+aug<copy>``: the one
# rule naming them. Models train on them only when told to; nothing scores them.
AUGMENTED_SUFFIX = "_aug"
COPY_MARK = "+aug"
# Copies per utterance in the records of a model that trains on augmented channels (what
# `cme-ser reproduce` preprocesses; `cme-ser preprocess --augment-copies` may write others).
TRAINING_COPIES = 1


def augmented_channel(channel: str) -> str:
    """The channel of the augmented copies of ``channel``'s records."""
    return channel + AUGMENTED_SUFFIX


def is_augmented(channel: str) -> bool:
    return channel.endswith(AUGMENTED_SUFFIX)


def source_channel(channel: str) -> str:
    """The channel an augmented channel's copies were made from (a real one: itself)."""
    return channel[: -len(AUGMENTED_SUFFIX)] if is_augmented(channel) else channel


def records_for(channels: Sequence[str]) -> Tuple[Tuple[str, ...], int]:
    """What to preprocess for a model trained on ``channels`` (real and augmented ones): the
    real channels, sources of the augmented ones included, and the copies per utterance
    (``TRAINING_COPIES`` if any channel is augmented, else 0)."""
    real = tuple(dict.fromkeys(source_channel(c) for c in channels))
    return real, TRAINING_COPIES if any(is_augmented(c) for c in channels) else 0


def copy_id(utterance_id: str, copy: int) -> str:
    """The utterance id of copy ``copy`` (1-based) of ``utterance_id``."""
    return f"{utterance_id}{COPY_MARK}{copy}"


# modality 03 = audio-only; vocal channel 01 = speech, 02 = song; then emotion, intensity,
# statement, repetition, actor.
_RAVDESS_NAME = re.compile(
    r"^03-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.(wav|flac)$", re.IGNORECASE
)
_RAVDESS_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")


def parse_channels(channels: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """``"speech,song"`` or ``["song"]`` -> the RAVDESS channel names, checked, in the given
    order without repeats; None -> ``DEFAULT_CHANNELS``."""
    if channels is None:
        return DEFAULT_CHANNELS
    names = channels.split(",") if isinstance(channels, str) else list(channels)
    names = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    valid = tuple(RAVDESS_CHANNELS.values())
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(
            f"ravdess: unknown channel(s) {unknown} (valid: {', '.join(valid)})"
            if unknown
            else f"ravdess: no channels given (valid: {', '.join(valid)})"
        )
    return names


def ravdess(
    data_dir: Union[PathLike, Sequence[PathLike]],
    classes: Sequence[str] = DEFAULT_CLASSES,
    channels: Union[str, Sequence[str], None] = DEFAULT_CHANNELS,
) -> Iterator[Item]:
    """RAVDESS speech and/or song: ``Actor_XX/03-CC-EE-II-SS-RR-AA.(wav|flac)``.

    ``data_dir`` is one directory or several (e.g. ``ravdess-speech`` and ``ravdess-song``),
    each holding ``Actor_XX`` directories; they are read in the order given. ``channels``
    ("speech", "song" or both) picks the vocal channels CC (01 speech, 02 song); files of
    another channel are skipped, like classes not asked for. Label from EE, transcript from SS
    (song sings the same two statements), speaker ``"Actor_XX"`` whatever the channel (so folds
    keep an actor's speech and song together), gender from the actor number (odd male "M",
    even female "F"), ``channel`` the channel's name. The utterance id is the file stem, whose
    second field is the channel code. ``classes`` are any of the 8 emotion names.

    Every non-hidden file in an ``Actor_XX`` directory whose name does not parse, whose actor
    differs from the directory's, or whose id was already read from another directory is
    ``Rejected``; files outside ``Actor_XX`` directories are not part of the corpus and are
    ignored.
    """
    classes = _check_classes(classes, tuple(RAVDESS_EMOTIONS.values()), "ravdess")
    channels = parse_channels(channels)
    roots = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    if not roots:
        raise ValueError("ravdess: no data directory given")
    actor_dirs = []
    for root in roots:
        found = sorted(
            (name, path)
            for name, path, kind in _entries(root)
            if kind == "dir" and _RAVDESS_ACTOR_DIR.match(name)
        )
        if not found:
            raise ValueError(f"ravdess: no Actor_XX directories in {_shown(root)}")
        actor_dirs += found
    return _ravdess_items(actor_dirs, classes, channels)  # arguments checked now, files lazily


def _ravdess_items(
    actor_dirs: List[Tuple[str, str]], classes: Tuple[str, ...], channels: Tuple[str, ...]
) -> Iterator[Item]:
    seen: Dict[str, str] = {}
    for actor_name, actor_dir in actor_dirs:
        actor = _RAVDESS_ACTOR_DIR.match(actor_name).group(1)
        for name, path, kind in sorted(_entries(actor_dir)):
            if name.startswith("."):  # .DS_Store, AppleDouble "._x.wav" files
                continue
            utterance_id = name.rsplit(".", 1)[0]
            match = _RAVDESS_NAME.match(name)
            if kind != "file" or not match:
                yield Rejected(
                    utterance_id,
                    path,
                    CORPUS_STAGE,
                    "name does not match 03-CC-EE-II-SS-RR-AA.(wav|flac) "
                    "(audio-only speech 01 or song 02, valid codes)",
                )
                continue
            channel_code, emotion, _, statement, _, file_actor, _ = match.groups()
            if file_actor != actor:
                yield Rejected(
                    utterance_id,
                    path,
                    CORPUS_STAGE,
                    f"actor {file_actor} in the name but in directory {actor_name}",
                )
                continue
            channel = RAVDESS_CHANNELS[channel_code]
            label = RAVDESS_EMOTIONS[emotion]
            if channel not in channels or label not in classes:
                continue
            if utterance_id in seen:
                yield Rejected(
                    utterance_id,
                    path,
                    CORPUS_STAGE,
                    f"the same recording was already read from {seen[utterance_id]}",
                )
                continue
            seen[utterance_id] = path
            yield Utterance(
                utterance_id=utterance_id,
                audio_path=path,
                speaker=actor_name,
                label_name=label,
                transcript=RAVDESS_STATEMENTS[statement],
                gender="M" if int(actor) % 2 else "F",
                channel=channel,
            )


# ---------------------------------------------------------------------------------------------
# IEMOCAP

IEMOCAP_CODES = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "ang": "angry",
    "sad": "sad",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgust",
    "oth": "other",
}
IEMOCAP_NO_AGREEMENT = "xxx"  # annotators did not agree: never a training label
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
_IEMOCAP_LABEL = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\w+)\s+(\w+)\s+\[")
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
_IEMOCAP_TRANSCRIPT = re.compile(r"^(Ses\w+)\s+\[\s*[\d.]+\s*-\s*[\d.]+\s*\]:\s?(.*)$")
_IEMOCAP_UTTERANCE = re.compile(r"^(Ses\d\d)[FM]_.+_([FM])[^_]*$")
_IEMOCAP_SESSION_DIR = re.compile(r"^Session\d+$")


def iemocap(
    data_dir: PathLike, classes: Sequence[str] = DEFAULT_CLASSES, merge_excited: bool = True
) -> Iterator[Item]:
    """IEMOCAP release layout under ``data_dir/SessionN/``.

    Labels: ``dialog/EmoEvaluation/*.txt``; transcripts: ``dialog/transcriptions/*.txt``; audio:
    ``sentences/wav/<dialog>/<utt>.wav``; word alignment ``sentences/ForcedAlignment/<dialog>/
    <utt>.wdseg`` (set when the file exists). Speaker ``Ses01F_impro01_F000`` -> "Ses01_F" (the
    letter of the last id segment says who speaks); group "Session1". ``xxx`` (no agreement)
    is always left out; ``exc`` becomes happy when ``merge_excited``. An utterance without a
    transcript line gets ``transcript=None``.
    """
    valid = tuple(
        name for name in IEMOCAP_CODES.values() if not (merge_excited and name == "excited")
    )
    if merge_excited and "excited" in tuple(classes):
        raise ValueError(
            "iemocap: 'excited' is merged into 'happy'; pass merge_excited=False "
            "to use it as a class"
        )
    classes = _check_classes(classes, valid, "iemocap")
    root = Path(data_dir)
    sessions = sorted(
        (p for p in _subdirectories(root) if _IEMOCAP_SESSION_DIR.match(p.name)),
        key=lambda p: int(p.name[len("Session") :]),
    )
    if not sessions:
        raise ValueError(f"iemocap: no SessionN directories in {root}")
    return _iemocap_items(sessions, classes, merge_excited)


def _iemocap_items(
    sessions: List[Path], classes: Tuple[str, ...], merge_excited: bool
) -> Iterator[Item]:
    for session in sessions:
        transcripts = _iemocap_transcripts(session / "dialog" / "transcriptions")
        for label_file in _visible_txt(session / "dialog" / "EmoEvaluation"):
            for utterance_id, code in _iemocap_labels(label_file):
                item = _iemocap_item(
                    session, label_file, utterance_id, code, transcripts, classes, merge_excited
                )
                if item is not None:
                    yield item


def _iemocap_item(
    session: Path,
    label_file: Path,
    utterance_id: str,
    code: str,
    transcripts: Dict[str, str],
    classes: Tuple[str, ...],
    merge_excited: bool,
) -> Optional[Item]:
    if code == IEMOCAP_NO_AGREEMENT:
        return None
    if code not in IEMOCAP_CODES:
        return Rejected(
            utterance_id, str(label_file), CORPUS_STAGE, f"unknown emotion code {code!r}"
        )
    label = IEMOCAP_CODES[code]
    if merge_excited and label == "excited":
        label = "happy"
    if label not in classes:
        return None
    match = _IEMOCAP_UTTERANCE.match(utterance_id)
    if not match:
        return Rejected(
            utterance_id,
            str(label_file),
            CORPUS_STAGE,
            "utterance id does not look like SesNN[FM]_<dialog>_[FM]NNN",
        )
    session_code, speaker_gender = match.groups()
    dialog = utterance_id.rsplit("_", 1)[0]
    sentences = session / "sentences"
    alignment = sentences / "ForcedAlignment" / dialog / f"{utterance_id}.wdseg"
    has_alignment = alignment.is_file()
    return Utterance(
        utterance_id=utterance_id,
        audio_path=str(sentences / "wav" / dialog / f"{utterance_id}.wav"),
        speaker=f"{session_code}_{speaker_gender}",
        label_name=label,
        transcript=transcripts.get(utterance_id),
        alignment_path=str(alignment) if has_alignment else None,
        alignment_format="wdseg" if has_alignment else None,
        group=session.name,
        gender=speaker_gender,
    )


def _shown(root) -> str:
    """A directory as error messages showed it before object storage (``Path`` normalised)."""
    return str(root) if "://" in str(root) else str(Path(root))


def _entries(directory) -> List[Tuple[str, str, str]]:
    """``(name, path, kind)`` of a directory's entries, kind "dir", "file" or "other" (none
    if it is not a directory). Object storage (``s3://``, ``gs://``) is listed through
    ``tf.io.gfile`` (``infra.filesystems``); local directories as they always were."""
    if "://" not in str(directory):
        root = Path(directory)
        return (
            [
                (p.name, str(p), "dir" if p.is_dir() else "file" if p.is_file() else "other")
                for p in root.iterdir()
            ]
            if root.is_dir()
            else []
        )
    import tensorflow as tf

    from infra import filesystems

    filesystems.enable(directory)
    if not tf.io.gfile.isdir(directory):
        return []
    entries = []
    for name in tf.io.gfile.listdir(directory):
        name = name.rstrip("/")  # GCS lists "directories" with a trailing slash
        path = filesystems.join(directory, name)
        entries.append((name, path, "dir" if tf.io.gfile.isdir(path) else "file"))
    return entries


def _subdirectories(root: Path) -> List[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def _visible_txt(directory: Path) -> List[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.txt") if p.is_file() and not p.name.startswith("."))


def _iemocap_labels(path: Path) -> Iterator[Tuple[str, str]]:
    """(utterance id, emotion code) of each turn line; header and annotator lines are skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _IEMOCAP_LABEL.match(line.strip())
            if match:
                yield match.group(1), match.group(2).lower()


def _iemocap_transcripts(directory: Path) -> Dict[str, str]:
    transcripts = {}
    for path in _visible_txt(directory):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                match = _IEMOCAP_TRANSCRIPT.match(line.strip())
                if match:
                    transcripts[match.group(1)] = match.group(2).strip()
    return transcripts


# ---------------------------------------------------------------------------------------------
# Manifests

MANIFEST_REQUIRED = ("path", "label")


def manifest(path: PathLike, classes: Optional[Sequence[str]] = None) -> Iterator[Item]:
    """A CSV (``.csv``) or JSON-lines (``.jsonl``/``.ndjson``) list of utterances.

    Columns: ``path``, ``label`` (required); ``speaker``, ``transcript``, ``textgrid``, ``group``,
    ``gender`` (optional). Relative paths are resolved against the manifest's directory.
    Labels are stripped and lowercased. With ``classes``, a row whose label is not one of them
    is ``Rejected``; with ``classes=None`` every label is accepted. A row without a speaker is
    its own speaker (speaker = utterance id), so folds treat it as a separate person. An empty
    transcript means unknown (None). ``utterance_id`` is the audio file's stem, suffixed
    ``-2``, ``-3``, ... when a stem repeats.

    Raises:
        ValueError: unknown extension, or a CSV header without ``path`` / ``label``.
    """
    path = Path(path)
    if classes is not None:
        classes = tuple(classes)
        if not classes:
            raise ValueError("manifest: classes is empty (pass None to accept every label)")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        _csv_header(path)  # a missing column fails now, not at the first row
    return _manifest_items(path, classes)


def _manifest_items(path: Path, classes: Optional[Tuple[str, ...]]) -> Iterator[Item]:
    seen: collections.Counter = collections.Counter()
    for where, row in manifest_rows(path):
        yield _manifest_item(path.parent, where, row, classes, seen)


def _csv_header(path: Path) -> List[str]:
    with open(path, newline="", encoding="utf-8") as f:
        header = [h.strip() for h in (csv.DictReader(f).fieldnames or [])]
    missing = [c for c in MANIFEST_REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: manifest header lacks column(s) {missing} (has {header})")
    return header


def manifest_rows(path: PathLike) -> Iterator[Tuple[str, object]]:
    """(``"<manifest>:<line>"``, row) pairs of a ``.csv`` or ``.jsonl``/``.ndjson`` file; a row
    is a dict with stripped keys and (string) values, or an error string for bad JSON."""
    for where, row in _raw_manifest_rows(Path(path)):
        yield (
            where,
            row
            if isinstance(row, str)
            else {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k},
        )


def _raw_manifest_rows(path: Path) -> Iterator[Tuple[str, object]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            # Reading fieldnames consumes the header line; then strip the names ("path, label").
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        row = "not a JSON object"
                except json.JSONDecodeError as error:
                    row = f"not valid JSON ({error.msg})"
                yield f"{path}:{number}", row


def _manifest_item(
    base: Path, where: str, row, classes: Optional[Tuple[str, ...]], seen: collections.Counter
) -> Item:
    if isinstance(row, str):
        return Rejected(where, where, CORPUS_STAGE, row)
    value = row
    missing = [c for c in MANIFEST_REQUIRED if value.get(c) in (None, "")]
    audio = value.get("path")
    audio_path = resolve_path(base, str(audio)) if audio not in (None, "") else None
    if missing:
        return Rejected(
            Path(audio_path).stem if audio_path else where,
            audio_path or where,
            CORPUS_STAGE,
            f"missing {', '.join(missing)} ({where})",
        )
    stem = Path(audio_path).stem
    seen[stem] += 1
    utterance_id = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
    label = str(value["label"]).lower()
    if classes is not None and label not in classes:
        return Rejected(
            utterance_id,
            audio_path,
            CORPUS_STAGE,
            f"unknown label {label!r} (classes: {', '.join(classes)}) ({where})",
        )
    textgrid = value.get("textgrid")
    transcript = value.get("transcript")
    return Utterance(
        utterance_id=utterance_id,
        audio_path=audio_path,
        speaker=str(value.get("speaker") or utterance_id),
        label_name=label,
        transcript=str(transcript) if transcript else None,
        alignment_path=resolve_path(base, str(textgrid)) if textgrid else None,
        alignment_format="textgrid" if textgrid else None,
        group=str(value["group"]) if value.get("group") else None,
        gender=str(value["gender"]) if value.get("gender") else None,
    )


def resolve_path(base: Path, path: str) -> str:
    """``path`` (``~`` expanded) as is when absolute, else relative to ``base``."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def items(
    dataset: str,
    path: Union[PathLike, Sequence[PathLike]],
    classes: Optional[Sequence[str]] = None,
    channels: Union[str, Sequence[str], None] = None,
) -> List[Item]:
    """All items of ``dataset`` ("ravdess", "iemocap" or "manifest") at ``path`` (RAVDESS: one
    directory or several); ``classes`` None means the corpus default (the 4 classes; every
    label for a manifest); ``channels`` None means the default (RAVDESS: speech only), and only
    RAVDESS has others."""
    if dataset == "ravdess":
        return list(ravdess(path, classes or DEFAULT_CLASSES, channels))
    if dataset not in ("iemocap", "manifest"):
        raise ValueError(f"unknown dataset {dataset!r} (ravdess, iemocap, manifest)")
    if channels is not None and parse_channels(channels) != DEFAULT_CHANNELS:
        raise ValueError(f"{dataset}: only ravdess has channels other than speech")
    if dataset == "manifest":
        return list(manifest(path, classes))
    return list(iemocap(path, classes or DEFAULT_CLASSES))


# ---------------------------------------------------------------------------------------------
# Folds


def assign_folds(
    utterances: Iterable[Item], num_folds: int = 5, by: str = "speaker", seed: int = 0
) -> Dict[str, int]:
    """Speaker-independent folds: ``{speaker: fold}`` with folds ``0 .. num_folds - 1``.

    ``by="speaker"``: speakers are dealt greedily, each to the fold with the fewest utterances;
    when every speaker's gender is known, genders are dealt one after the other and a speaker
    goes first to a fold with the fewest speakers of its gender, so each fold gets both genders
    whenever there are enough. ``by="group"``: whole groups (IEMOCAP sessions) are dealt the
    same way and their speakers follow them; with as many groups as folds, one group per fold.

    Units are dealt largest first, ties by name; a non-zero ``seed`` shuffles the tie order.
    A unit's size is its number of utterances of the ``PRIMARY_CHANNEL`` (speech) or without a
    channel, when there are any: adding RAVDESS song to speech then leaves every actor in the
    fold the speech-only plan gives it (its song follows it). Only when no utterance is speech
    (song alone) are all utterances counted. Folds are then numbered by the sorted name of
    their first member (Actor_01 / Session1 is in fold 0). ``Rejected`` items are ignored.

    Raises:
        ValueError: ``num_folds < 2``, more folds than speakers/groups, unknown ``by``, a group
            missing under ``by="group"``, or a speaker in two groups.
    """
    if by not in ("speaker", "group"):
        raise ValueError(f"by must be 'speaker' or 'group', got {by!r}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    utterances = [u for u in utterances if isinstance(u, Utterance)]
    if not utterances:
        raise ValueError("assign_folds: no utterances")

    counts: collections.Counter = collections.Counter()
    genders: Dict[str, Optional[str]] = {}
    speaker_group: Dict[str, Optional[str]] = {}
    primary = [u.channel in (None, PRIMARY_CHANNEL) for u in utterances]
    if not any(primary):
        primary = [True] * len(utterances)
    for u, counted in zip(utterances, primary):
        unit = u.speaker if by == "speaker" else u.group
        if unit is None:
            raise ValueError(f"assign_folds(by='group'): utterance {u.utterance_id} has no group")
        if by == "group" and speaker_group.setdefault(u.speaker, u.group) != u.group:
            raise ValueError(
                f"assign_folds(by='group'): speaker {u.speaker} is in groups "
                f"{speaker_group[u.speaker]} and {u.group}"
            )
        counts[unit] += 1 if counted else 0
        genders.setdefault(unit, u.gender)
    if num_folds > len(counts):
        raise ValueError(f"num_folds={num_folds} but only {len(counts)} {by}s")

    # Strata: one per gender when all speakers' genders are known, else a single stratum.
    stratified = by == "speaker" and all(g is not None for g in genders.values())
    strata: Dict[Optional[str], List[str]] = collections.defaultdict(list)
    for unit in counts:
        strata[genders[unit] if stratified else None].append(unit)

    rng = random.Random(seed)
    load = [0] * num_folds
    members: List[List[str]] = [[] for _ in range(num_folds)]
    for stratum in sorted(strata, key=str):
        units = sorted(strata[stratum])
        if seed:
            rng.shuffle(units)
        units.sort(key=lambda unit: -counts[unit])  # stable: ties keep the (shuffled) name order
        in_stratum = [0] * num_folds
        for unit in units:
            # Fewest speakers of this gender first (so every fold gets both), then lightest.
            fold = min(
                range(num_folds), key=lambda f: (in_stratum[f] if stratified else 0, load[f], f)
            )
            members[fold].append(unit)
            in_stratum[fold] += 1
            load[fold] += counts[unit]

    order = sorted(range(num_folds), key=lambda f: min(members[f]))
    unit_fold = {unit: new for new, old in enumerate(order) for unit in members[old]}
    if by == "speaker":
        return unit_fold
    return {speaker: unit_fold[group] for speaker, group in speaker_group.items()}


def labels_by_speaker(utterances: Iterable[Item]) -> Dict[str, Dict[str, int]]:
    """``{speaker: {label name: utterance count}}`` of the ``Utterance`` items."""
    counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for u in utterances:
        if isinstance(u, Utterance):
            counts[u.speaker][u.label_name] += 1
    return {speaker: dict(labels) for speaker, labels in counts.items()}


def fold_summary(utterances: Iterable[Item], folds: Dict[str, int]) -> List[Dict[str, object]]:
    """Per fold: its speakers, utterance count and label counts (for logs and reports), and
    channel counts when the utterances have channels (RAVDESS)."""
    utterances = [u for u in utterances if isinstance(u, Utterance)]
    with_channels = any(u.channel is not None for u in utterances)
    summary = [
        {"fold": f, "speakers": [], "utterances": 0, "labels": collections.Counter()}
        for f in range(max(folds.values()) + 1)
    ]
    for entry in summary:
        if with_channels:
            entry["channels"] = collections.Counter()
    for speaker, fold in sorted(folds.items()):
        summary[fold]["speakers"].append(speaker)
    for u in utterances:
        entry = summary[folds[u.speaker]]
        entry["utterances"] += 1
        entry["labels"][u.label_name] += 1
        if with_channels:
            entry["channels"][str(u.channel)] += 1
    for entry in summary:
        for key in ("labels", "channels"):
            if key in entry:
                entry[key] = dict(sorted(entry[key].items()))
    return summary
