"""Scoring a timeline against labelled segments of a long recording (``cme-ser evaluate
--dataset segments``, and the timeline tests).

* **Boundary F1**: a detected onset (offset) is a hit when it lies within ``tolerance_s`` of a
  reference onset (offset) not already matched, greedily in time order; F1 =
  ``2 hits / (references + detections)``.
* **Matching**: each labelled segment takes the timeline row that overlaps it most (at least
  ``MIN_OVERLAP`` of the labelled segment's length); its prediction is that row's emotion. A
  labelled segment without such a row is unscored and said so.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

DEFAULT_TOLERANCE_S = 0.2
MIN_OVERLAP = 0.5


@dataclasses.dataclass(frozen=True)
class LabelledSegment:
    """A manifest row: ``audio`` (resolved), ``start_s`` / ``end_s``, ``label``, the recording's
    timed transcript (None: recognise), where it was read (``"<manifest>:<line>"``)."""

    audio: str
    start_s: float
    end_s: float
    label: str
    transcript_file: Optional[str]
    where: str


def boundary_f1(
    reference: Sequence[float], detected: Sequence[float], tolerance_s: float = DEFAULT_TOLERANCE_S
) -> dict:
    """``{"f1", "hits", "reference", "detected"}`` for two lists of times in seconds."""
    reference, detected = sorted(reference), sorted(detected)
    used = [False] * len(detected)
    hits = 0
    for time in reference:
        best = None
        for j, other in enumerate(detected):
            if (
                not used[j]
                and abs(other - time) <= tolerance_s
                and (best is None or abs(other - time) < abs(detected[best] - time))
            ):
                best = j
        if best is not None:
            used[best] = True
            hits += 1
    total = len(reference) + len(detected)
    return {
        "f1": 2 * hits / total if total else 1.0,
        "hits": hits,
        "reference": len(reference),
        "detected": len(detected),
    }


def overlap(a: Tuple[float, float], b: Tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def match(reference: Sequence[Tuple[float, float]], rows: Sequence) -> List[Optional[int]]:
    """For each reference ``(start_s, end_s)``, the index of the row (anything with
    ``start_s`` / ``end_s``) overlapping it most, if by at least ``MIN_OVERLAP`` of its
    length; else None."""
    out = []
    for start, end in reference:
        best, amount = None, MIN_OVERLAP * (end - start)
        for i, row in enumerate(rows):
            shared = overlap((start, end), (row.start_s, row.end_s))
            if shared >= amount and shared > 0:
                best, amount = i, shared
        out.append(best)
    return out


def segment_scores(
    reference: Sequence[Tuple[float, float]],
    rows: Sequence,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Dict[str, dict]:
    """Onset and offset F1 of a timeline's rows against reference segments."""
    return {
        "onset": boundary_f1([s for s, _ in reference], [r.start_s for r in rows], tolerance_s),
        "offset": boundary_f1([e for _, e in reference], [r.end_s for r in rows], tolerance_s),
    }


def read_segment_manifest(path) -> List[LabelledSegment]:
    """The rows of a CSV with columns ``path, start, end, label`` (seconds; one row per labelled
    segment, any number per recording) and optionally ``transcript`` (a timed transcript file
    of the recording). Paths are relative to the manifest. Labels are lowercased.

    Raises:
        ValueError: missing file, missing columns, or a row whose times or label are bad
            (naming the line).
    """
    from preprocessing.corpora import resolve_path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("path", "start", "end", "label") if c not in header]
        if missing:
            raise ValueError(
                f"{path}: a segment manifest needs columns path, start, end, label "
                f"(missing {', '.join(missing)}; has {header})"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{path}:{line}"
            try:
                start, end = float(row["start"]), float(row["end"])
            except ValueError:
                raise ValueError(
                    f"{where}: start and end must be seconds, got {row['start']!r}, {row['end']!r}"
                ) from None
            if not 0 <= start < end:
                raise ValueError(f"{where}: need 0 <= start < end, got {start}, {end}")
            if not row["label"] or not row["path"]:
                raise ValueError(f"{where}: empty path or label")
            transcript = row.get("transcript") or None
            rows.append(
                LabelledSegment(
                    resolve_path(path.parent, row["path"]),
                    start,
                    end,
                    row["label"].lower(),
                    resolve_path(path.parent, transcript) if transcript else None,
                    where,
                )
            )
    return rows
