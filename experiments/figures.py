"""Figures of the results: the t-SNE of held-out utterance embeddings (the paper's Figure 2)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Sequence, Tuple

import numpy as np


def tsne(
    panels: Sequence[Tuple[str, str, Mapping[str, np.ndarray]]],
    class_names: Sequence[str],
    out_path,
) -> List[dict]:
    """Draws one t-SNE panel per ``(variant, title, data)`` (``data["embeddings"]`` ``[N, D]``,
    ``data["labels"]`` ``[N]``) side by side into ``out_path``, each titled with the silhouette
    score of the true classes in the embedding space; returns ``{"variant", "title",
    "silhouette"}`` per panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    info = []
    for ax, (variant, title, data) in zip(axes[0], panels):
        points = TSNE(
            n_components=2,
            perplexity=min(30.0, len(data["labels"]) - 1.0),
            random_state=0,
            init="pca",
        ).fit_transform(data["embeddings"])
        for k, name in enumerate(class_names):
            chosen = data["labels"] == k
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, label=name)
        score = float(silhouette_score(data["embeddings"], data["labels"]))
        ax.set_title(f"{title}\nsilhouette {score:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        info.append({"variant": variant, "title": title, "silhouette": score})
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return info
