"""The cross-validation report: per-fold rows -> mean +- std WA / UA, summed confusion matrix,
written as ``report.json``, ``report.md`` and ``confusion.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from trainer.metrics import unweighted_accuracy, weighted_accuracy

# Table 1 of Li et al. (2021), RAVDESS 4-class, for comparison.
PAPER_RAVDESS = {"wa": 0.720, "ua": 0.708}


def summarize(rows: List[dict], class_names: Sequence[str]) -> dict:
    """``rows``: one dict per fold with ``fold``, ``wa``, ``ua``, ``confusion`` (+ anything)."""
    wa = np.array([r["wa"] for r in rows], dtype=float)
    ua = np.array([r["ua"] for r in rows], dtype=float)
    confusion = np.sum([np.asarray(r["confusion"], dtype=np.int64) for r in rows], axis=0)
    return {
        "classes": list(class_names), "folds": rows,
        "wa_mean": float(wa.mean()), "wa_std": float(wa.std()),
        "ua_mean": float(ua.mean()), "ua_std": float(ua.std()),
        "pooled_wa": weighted_accuracy(confusion), "pooled_ua": unweighted_accuracy(confusion),
        "confusion": confusion.tolist(), "paper_ravdess": PAPER_RAVDESS,
    }


def render_markdown(report: dict) -> str:
    classes = report["classes"]
    lines = ["# Cross-validation report", "",
             f"WA {report['wa_mean']:.3f} +- {report['wa_std']:.3f}, "
             f"UA {report['ua_mean']:.3f} +- {report['ua_std']:.3f} over "
             f"{len(report['folds'])} speaker-independent folds "
             f"(paper, RAVDESS: WA {PAPER_RAVDESS['wa']:.3f}, UA {PAPER_RAVDESS['ua']:.3f}).", "",
             "| fold | examples | WA | UA | " + " | ".join(f"recall {c}" for c in classes) + " |",
             "|---" * (4 + len(classes)) + "|"]
    for row in report["folds"]:
        confusion = np.asarray(row["confusion"])
        recalls = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
        lines.append(f"| {row['fold']} | {int(confusion.sum())} | {row['wa']:.3f} | "
                     f"{row['ua']:.3f} | " + " | ".join(f"{r:.3f}" for r in recalls) + " |")
    lines += ["", "Summed confusion matrix (rows: true class, columns: predicted):", ""]
    lines += confusion_table(report["confusion"], classes)
    return "\n".join(lines) + "\n"


def confusion_table(confusion, class_names: Sequence[str]) -> List[str]:
    """The markdown lines of a confusion matrix (rows: true class, columns: predicted)."""
    lines = ["| | " + " | ".join(class_names) + " |", "|---" * (len(class_names) + 1) + "|"]
    for name, row in zip(class_names, confusion):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def plot_confusion(confusion, class_names: Sequence[str], path,
                   title: str = "summed over folds") -> None:
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
            ax.text(j, i, f"{confusion[i, j]}\n{rates[i, j]:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: List[dict], class_names: Sequence[str], out_dir, **extra) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**summarize(rows, class_names), **extra}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report))
    plot_confusion(report["confusion"], class_names, out_dir / "confusion.png")
    return report
