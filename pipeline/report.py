"""The cross-validation report: per-fold rows -> mean +- std WA / UA, summed confusion matrix,
written as ``report.json``, ``report.md`` and ``confusion.png``; and the push decision
(:func:`blessing_decision`) that gates the Pusher, recorded in both reports.

The default bar, ``DEFAULT_BLESS_MIN_UA`` = 0.0, blocks no model on its score: the right bar
depends on the corpus, the classes and the training budget (a 1-2 epoch smoke run sits near
chance), so a score bar is the user's explicit choice (``cme-ser run --bless-min-ua``), while
data anomalies and a missing / non-finite UA always block."""

from __future__ import annotations

import io
import json
import math
from typing import List, Mapping, Optional, Sequence

import numpy as np

from trainer.metrics import unweighted_accuracy, weighted_accuracy

# Table 1 of Li et al. (2021), RAVDESS 4-class, for comparison.
PAPER_RAVDESS = {"wa": 0.720, "ua": 0.708}
DEFAULT_BLESS_MIN_UA = 0.0

RELIABILITY_PNG = "reliability.png"


def blessing_decision(
    ua_mean: Optional[float],
    min_ua: float = DEFAULT_BLESS_MIN_UA,
    anomalies: Optional[Mapping[str, Sequence[str]]] = None,
) -> dict:
    """Whether the final model may be pushed: the cross-validated UA mean is at least
    ``min_ua`` and ExampleValidator found no anomaly (``anomalies``: split -> descriptions).

    Returns ``{"blessed", "min_ua", "ua_mean", "anomalies", "reasons"}``; ``reasons`` (empty
    when blessed) says why not, one sentence each."""
    anomalies = {split: list(found) for split, found in (anomalies or {}).items() if found}
    reasons = []
    if ua_mean is None or not math.isfinite(ua_mean):
        reasons.append(f"the cross-validated UA is not a number ({ua_mean})")
    elif ua_mean < min_ua:
        reasons.append(
            f"cross-validated UA mean {ua_mean:.3f} is below the bar --bless-min-ua {min_ua:g}"
        )
    for split, found in sorted(anomalies.items()):
        reasons.append(
            f"ExampleValidator found {len(found)} anomal"
            f"{'y' if len(found) == 1 else 'ies'} in split {split}: " + "; ".join(found)
        )
    return {
        "blessed": not reasons,
        "min_ua": float(min_ua),
        "ua_mean": ua_mean,
        "anomalies": anomalies,
        "reasons": reasons,
    }


def render_blessing(blessing: dict) -> List[str]:
    """The markdown lines of a push decision."""
    if blessing["blessed"]:
        return [
            "## Push: blessed",
            "",
            f"Cross-validated UA mean {blessing['ua_mean']:.3f} >= --bless-min-ua "
            f"{blessing['min_ua']:g} and no data anomalies. The Pusher pushes the final "
            "model once it has also loaded in a fresh process and answered its warm-up "
            "requests (ModelLoadValidator, which runs after this report); the run's last "
            "lines say whether it did.",
        ]
    return [
        "## Push: NOT blessed",
        "",
        "The final model is not pushed; the serving directory is left untouched:",
        "",
    ] + [f"- {reason}" for reason in blessing["reasons"]]


def summarize(rows: List[dict], class_names: Sequence[str]) -> dict:
    """``rows``: one dict per fold with ``fold``, ``wa``, ``ua``, ``confusion`` (+ anything)."""
    wa = np.array([r["wa"] for r in rows], dtype=float)
    ua = np.array([r["ua"] for r in rows], dtype=float)
    confusion = np.sum([np.asarray(r["confusion"], dtype=np.int64) for r in rows], axis=0)
    return {
        "classes": list(class_names),
        "folds": rows,
        "wa_mean": float(wa.mean()),
        "wa_std": float(wa.std()),
        "ua_mean": float(ua.mean()),
        "ua_std": float(ua.std()),
        "pooled_wa": weighted_accuracy(confusion),
        "pooled_ua": unweighted_accuracy(confusion),
        "confusion": confusion.tolist(),
        "paper_ravdess": PAPER_RAVDESS,
        "by_channel": by_channel(rows),
    }


def by_channel(rows: List[dict]) -> dict:
    """Per channel (rows' ``by_channel``, present in every fold): WA and UA mean and std over
    the folds, and the examples. Empty for records of one channel."""
    channels = set.intersection(*(set(r.get("by_channel") or {}) for r in rows)) if rows else ()
    out = {}
    for channel in sorted(channels):
        wa = np.array([r["by_channel"][channel]["wa"] for r in rows], dtype=float)
        ua = np.array([r["by_channel"][channel]["ua"] for r in rows], dtype=float)
        out[channel] = {
            "wa_mean": float(wa.mean()),
            "wa_std": float(wa.std()),
            "ua_mean": float(ua.mean()),
            "ua_std": float(ua.std()),
            "examples": [int(r["by_channel"][channel]["examples"]) for r in rows],
        }
    return out


def render_markdown(report: dict) -> str:
    classes = report["classes"]
    channels = report.get("by_channel") or {}
    paper = f"(paper, RAVDESS: WA {PAPER_RAVDESS['wa']:.3f}, UA {PAPER_RAVDESS['ua']:.3f})"
    folds = f"{len(report['folds'])} speaker-independent folds"
    if channels:  # the paper's task (speech) first; the pooled score is neither task
        head = [
            f"{name.capitalize()}: WA {c['wa_mean']:.3f} +- {c['wa_std']:.3f}, "
            f"UA {c['ua_mean']:.3f} +- {c['ua_std']:.3f} over {folds}"
            + (f" {paper}." if name == "speech" else ".")
            for name, c in sorted(channels.items(), key=lambda kv: kv[0] != "speech")
        ]
        head.append(
            f"All held-out examples ({', '.join(sorted(channels))} together): WA "
            f"{report['wa_mean']:.3f} +- {report['wa_std']:.3f}, UA {report['ua_mean']:.3f} "
            f"+- {report['ua_std']:.3f}; the folds below are these."
        )
    else:
        head = [
            f"WA {report['wa_mean']:.3f} +- {report['wa_std']:.3f}, "
            f"UA {report['ua_mean']:.3f} +- {report['ua_std']:.3f} over {folds} {paper}."
        ]
    lines = [
        "# Cross-validation report",
        "",
        *(line for h in head for line in (h, "")),
        "| fold | examples | WA | UA | " + " | ".join(f"recall {c}" for c in classes) + " |",
        "|---" * (4 + len(classes)) + "|",
    ]
    for row in report["folds"]:
        confusion = np.asarray(row["confusion"])
        recalls = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
        lines.append(
            f"| {row['fold']} | {int(confusion.sum())} | {row['wa']:.3f} | "
            f"{row['ua']:.3f} | " + " | ".join(f"{r:.3f}" for r in recalls) + " |"
        )
    lines += ["", "Summed confusion matrix (rows: true class, columns: predicted):", ""]
    lines += confusion_table(report["confusion"], classes)
    if report.get("calibration"):
        lines += [""] + render_calibration(report["calibration"])
    if report.get("blessing"):
        lines += [""] + render_blessing(report["blessing"])
    return "\n".join(lines) + "\n"


def render_calibration(cal: dict) -> List[str]:
    """The Calibrator's section: the final model's temperature, and per fold the ECE of its
    held-out answers before and after the temperature fitted on the *other* folds."""
    pooled = cal["pooled"]
    lines = [
        "## Calibration",
        "",
        f"The pushed model serves its probabilities at temperature T = "
        f"{cal['temperature']:.3f}, fitted on every fold model's answers on its held-out "
        "speakers. Each fold below is scored with the temperature fitted on the other "
        f"folds only ({RELIABILITY_PNG}: all folds' answers so scaled). Held-out ECE "
        f"{pooled['before']['ece']:.3f} before, {pooled['after']['ece']:.3f} after "
        f"(NLL {pooled['before']['nll']:.3f} -> {pooled['after']['nll']:.3f}).",
        "",
        "| fold | examples | T (other folds) | ECE before | ECE after |",
        "|---|---|---|---|---|",
    ]
    for fold, f in sorted(cal["folds"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {fold} | {f['n']} | {f['temperature']:.3f} | "
            f"{f['before']['ece']:.3f} | {f['after']['ece']:.3f} |"
        )
    if len(cal.get("by_channel", {})) > 1:
        lines += [
            "",
            "By channel (pooled): "
            + "; ".join(
                f"{ch} ECE {c['before']['ece']:.3f} -> {c['after']['ece']:.3f}"
                for ch, c in cal["by_channel"].items()
            )
            + ".",
        ]
    return lines


def confusion_table(confusion, class_names: Sequence[str]) -> List[str]:
    """The markdown lines of a confusion matrix (rows: true class, columns: predicted)."""
    lines = ["| | " + " | ".join(class_names) + " |", "|---" * (len(class_names) + 1) + "|"]
    for name, row in zip(class_names, confusion):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def plot_confusion(
    confusion, class_names: Sequence[str], path, title: str = "summed over folds"
) -> None:
    """Counts and row-normalised rates (recall on the diagonal), blue by rate, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{confusion[i, j]}\n{rates[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    _write(path, png.getvalue(), "wb")


def plot_reliability(
    curves: Mapping[str, Sequence[Mapping]], path, title: str = "reliability"
) -> None:
    """The reliability diagram: per curve (e.g. "uncalibrated", "calibrated"), the accuracy of
    each confidence bin against its mean confidence (``trainer.calibration.reliability_bins``),
    the diagonal being a calibrated model; marker area by the bin's count. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="calibrated")
    for name, bins in curves.items():
        used = [b for b in bins if b["count"]]
        total = sum(b["count"] for b in used) or 1
        ax.plot(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            marker="o",
            lw=1.2,
            label=name,
            markersize=3,
        )
        ax.scatter(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            s=[400 * b["count"] / total for b in used],
            alpha=0.25,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    _write(path, png.getvalue(), "wb")


def _write(path, data, mode: str = "w") -> None:
    """Writes a local or object-storage (``s3://``, ``gs://``) file."""
    import tensorflow as tf

    from infra import filesystems

    filesystems.enable(path)
    with tf.io.gfile.GFile(str(path), mode) as f:
        f.write(data)


def write_report(rows: List[dict], class_names: Sequence[str], out_dir, **extra) -> dict:
    """``report.json``, ``report.md`` and ``confusion.png`` in ``out_dir`` (local or object
    storage)."""
    import tensorflow as tf

    from infra import filesystems

    out_dir = str(out_dir)
    filesystems.enable(out_dir)
    tf.io.gfile.makedirs(out_dir)
    report = {**summarize(rows, class_names), **extra}
    _write(filesystems.join(out_dir, "report.json"), json.dumps(report, indent=2))
    _write(filesystems.join(out_dir, "report.md"), render_markdown(report))
    plot_confusion(report["confusion"], class_names, filesystems.join(out_dir, "confusion.png"))
    if report.get("calibration"):
        pooled = report["calibration"]["pooled"]
        plot_reliability(
            {
                "uncalibrated": pooled["before"]["reliability"],
                "calibrated (other folds' T)": pooled["after"]["reliability"],
            },
            filesystems.join(out_dir, RELIABILITY_PNG),
            title=f"held-out answers, T = {report['calibration']['temperature']:.2f}",
        )
    return report
