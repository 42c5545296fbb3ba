"""The corpus options of the commands (``--data-dir``, ``--channels``, ``--classes``,
``--embeddings``): the directories found, the values read and checked, and every problem a
:class:`~infra.usage_error.UsageError` saying what to do. ``cme-ser preprocess``, ``run``,
``reproduce`` and ``evaluate`` share them; so do the TFX CLI's runner (pipeline/local_runner.py)
and the preprocessing benchmark."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

from infra.usage_error import UsageError

RAVDESS_HELP = (
    "RAVDESS speech is not here. Download Audio_Speech_Actors_01-24.zip from Zenodo "
    "record 1188976 (CC BY-NC-SA 4.0), unzip it and pass --data-dir, or set "
    "$CME_SER_DATA."
)
RAVDESS_SONG_HELP = (
    "RAVDESS song is not here. Download Audio_Song_Actors_01-24.zip from Zenodo "
    "record 1188976 (CC BY-NC-SA 4.0), unzip it and pass --data-dir, or set "
    "$CME_SER_SONG_DATA."
)


def find_data_dir(explicit: Optional[str]) -> Path:
    """--data-dir, then $CME_SER_DATA, ./data/ravdess-speech, ../shared/data/ravdess-speech."""
    if explicit:
        from infra import filesystems

        if filesystems.is_url(explicit):  # object storage (s3://, gs://), as the URL given
            if not _remote_dir_exists(explicit):
                raise UsageError(f"--data-dir {explicit} is not a directory (or cannot be read)")
            return explicit
        if not Path(explicit).is_dir():
            raise UsageError(f"--data-dir {explicit} is not a directory")
        return Path(explicit)
    candidates = [
        os.environ.get("CME_SER_DATA"),
        "data/ravdess-speech",
        "../shared/data/ravdess-speech",
    ]
    for candidate in filter(None, candidates):
        if Path(candidate).is_dir():
            return Path(candidate)
    raise UsageError(
        f"no data directory found (tried $CME_SER_DATA, ./data/ravdess-speech, "
        f"../shared/data/ravdess-speech). {RAVDESS_HELP}"
    )


def _remote_dir_exists(url: str) -> bool:
    import tensorflow as tf

    from infra import filesystems

    try:
        filesystems.enable(url)
        return tf.io.gfile.isdir(url)
    except (tf.errors.OpError, ValueError) as error:
        raise UsageError(f"cannot read {url}: {error}") from error


def find_data_dirs(
    explicit, dataset: str = "ravdess", channels: Optional[Sequence[str]] = None
) -> List[Path]:
    """The corpus directories: every --data-dir given (a string or a list of them; RAVDESS
    reads the Actor_XX directories of each, keeping the files of the asked-for channels), else
    one default per RAVDESS channel: speech as :func:`find_data_dir`, song from
    $CME_SER_SONG_DATA, ./data/ravdess-song, ../shared/data/ravdess-song."""
    explicit = [explicit] if isinstance(explicit, (str, os.PathLike)) else list(explicit or [])
    if explicit:
        return [find_data_dir(str(d)) for d in explicit]
    if dataset != "ravdess":
        raise UsageError(f"--dataset {dataset} needs --data-dir")
    dirs = []
    for channel in channels or ("speech",):
        if channel == "speech":
            dirs.append(find_data_dir(None))
            continue
        candidates = [
            os.environ.get("CME_SER_SONG_DATA"),
            "data/ravdess-song",
            "../shared/data/ravdess-song",
        ]
        found = next((Path(c) for c in filter(None, candidates) if Path(c).is_dir()), None)
        if found is None:
            raise UsageError(
                "no song directory found (tried $CME_SER_SONG_DATA, "
                f"./data/ravdess-song, ../shared/data/ravdess-song). "
                f"{RAVDESS_SONG_HELP}"
            )
        dirs.append(found)
    return dirs


def parse_channels(dataset: str, text: Optional[str]) -> Optional[tuple]:
    """--channels: None (the corpus default) or RAVDESS channel names."""
    from preprocessing import corpora

    if text is None:
        return None
    if dataset != "ravdess":
        raise UsageError(f"--channels is for --dataset ravdess (speech, song), not {dataset}")
    try:
        return corpora.parse_channels(text)
    except ValueError as error:
        raise UsageError(str(error)) from error


def corpus_items(dataset: str, dirs: List[Path], classes, channels) -> list:
    """The adapter's items, or a UsageError saying why there are none usable."""
    from preprocessing import corpora

    try:
        items = corpora.items(
            dataset, dirs[0] if len(dirs) == 1 else dirs, classes, channels=channels
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    if dataset == "ravdess" and not corpora.partition(items)[0]:
        raise UsageError(
            f"no RAVDESS {','.join(channels or corpora.DEFAULT_CHANNELS)} files of "
            f"the classes asked for in {', '.join(map(str, dirs))} (speech files "
            "are named 03-01-..., song 03-02-...; see --channels)"
        )
    return items


def parse_classes(text: Optional[str]) -> Optional[List[str]]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def resolve_embeddings(path: Optional[str]) -> str:
    from preprocessing import embeddings

    if path:
        embeddings.load(path)  # fail now, before any Beam worker starts, if it is unusable
        return path
    default = embeddings.default_embeddings_path()
    if not default.exists():
        raise UsageError(
            f"no word vectors at {default}: run `cme-ser embeddings fetch` "
            "(or pass --embeddings PATH)"
        )
    return str(default)
