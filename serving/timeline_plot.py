"""``cme-ser predict RECORDING --plot FILE.png``: a recording's timeline of emotions as a picture.

Top: the waveform's envelope (RMS of every 10 ms, in dBFS) over the whole recording, each
speech segment shaded in its emotion's colour and named, unreadable spans hatched. Below, per
segment, its class probabilities stacked in the same colours, as wide as the segment: how sure
the model is, and of what else. Time in seconds (minutes past 5 min) on the x axis.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from serving.timeline import Timeline, class_names_of

FRAMES_PER_SECOND = 100
MAX_POINTS = 4000  # envelope points drawn: the loudest of each stretch, for any length
_COLOURS = (
    "tab:red",
    "tab:orange",
    "tab:gray",
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)


def emotion_colours(classes: Sequence[str]) -> Dict[str, str]:
    """A colour per class, in class order."""
    return {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(classes)}


def plot_timeline(timeline: Timeline, path: str, *, title: str = ""):
    """Draws ``timeline`` into ``path`` (PNG); returns the (closed) matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = class_names_of(timeline.rows)
    colours = emotion_colours(classes)
    minutes = timeline.duration_s > 300
    scale = 60.0 if minutes else 1.0
    envelope = 20.0 * np.log10(np.maximum(timeline.envelope, 1e-5))
    step = max(1, -(-envelope.size // MAX_POINTS))
    if envelope.size:
        padded = np.pad(envelope, (0, -envelope.size % step), constant_values=-100.0)
        envelope = padded.reshape(-1, step).max(axis=1)
    times = np.arange(envelope.size) * step / FRAMES_PER_SECOND / scale

    figure, (wave, probabilities) = plt.subplots(
        2, 1, figsize=(12, 4.8), sharex=True, gridspec_kw={"height_ratios": [1.3, 1]}
    )
    floor = float(np.percentile(envelope, 2)) - 3.0 if envelope.size else -100.0
    wave.fill_between(times, floor, envelope, color="black", lw=0, alpha=0.75)
    wave.set_ylim(floor, max(float(envelope.max()) + 3.0, floor + 10.0) if envelope.size else 0)
    wave.set_ylabel("level (dBFS)")
    for row in timeline.rows:
        start, end = row.start_s / scale, row.end_s / scale
        colour = colours.get(row.emotion, "white")
        wave.axvspan(start, end, color=colour, alpha=0.35 if row.emotion else 0.15, lw=0)
        if row.emotion is None:
            wave.axvspan(start, end, fill=False, hatch="..", edgecolor="gray", lw=0)
        bottom = 0.0
        for name in classes:
            p = row.prediction.probabilities[name] if row.prediction is not None else 0.0
            probabilities.bar(
                start,
                p,
                width=max(end - start, 1e-3),
                bottom=bottom,
                align="edge",
                color=colours[name],
                lw=0,
            )
            bottom += p
    if len(timeline.rows) <= 40:  # names fit
        for row in timeline.rows:
            if row.emotion is not None:
                wave.text(
                    (row.start_s + row.end_s) / 2 / scale,
                    wave.get_ylim()[1],
                    row.emotion,
                    ha="center",
                    va="top",
                    fontsize=8,
                    rotation=90,
                )
    for span in timeline.unreadable:
        wave.axvspan(
            span.start_s / scale,
            span.end_s / scale,
            fill=False,
            hatch="//",
            edgecolor="darkred",
            lw=0,
        )
    probabilities.set_ylim(0, 1)
    probabilities.set_ylabel("probability")
    probabilities.set_xlabel("minutes" if minutes else "seconds")
    probabilities.set_xlim(0, timeline.duration_s / scale)
    handles = [Patch(color=colours[c], label=c) for c in classes]
    if timeline.unreadable:
        handles.append(Patch(fill=False, hatch="//", edgecolor="darkred", label="unreadable"))
    if handles:
        probabilities.legend(
            handles=handles,
            loc="upper center",
            ncol=len(handles),
            bbox_to_anchor=(0.5, -0.35),
            frameon=False,
            fontsize=9,
        )
    predicted = sum(r.emotion is not None for r in timeline.rows)
    figure.suptitle(
        f"{title + ': ' if title else ''}{len(timeline.rows)} speech segments, "
        f"{predicted} predicted"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure
