"""The text of the results tables: how every table writes its numbers and Markdown rows (one
definition for the tables of ``experiments.reproduce``, ``experiments.nested`` and
``experiments.crossdomain``), and Table 1 itself (``<dataset>.md`` of ``experiments.reproduce``).

Scores have 3 decimals, gains a sign as well; a p-value below 0.001 is written ``<0.001``.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence


def ci(stat: dict, folds: Optional[int] = None) -> str:
    """``mean [lo, hi]`` of a ``statistics.mean_ci`` result (the mean alone for one fold); given
    ``folds``, a mean over another number of folds k says ``(n = k)``."""
    text = f"{stat['mean']:.3f}"
    if stat["ci95"]:
        text += " [{:.3f}, {:.3f}]".format(*stat["ci95"])
    if folds is not None and stat["n_folds"] != folds:
        text += f" (n = {stat['n_folds']})"
    return text


def signed_ci(test: dict) -> str:
    """``+mean [+lo, +hi]`` of a ``statistics.paired_test`` result."""
    return "{:+.3f} [{:+.3f}, {:+.3f}]".format(test["mean"], *test["ci95"])


def p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def gain(test: Optional[dict]) -> str:
    """``+mean [lo, hi] (p, Holm p: verdict)`` of a Holm-corrected ``paired_test`` result
    (``statistics.correct_family``); ``-`` for none."""
    if not test:
        return "-"
    return (
        signed_ci(test)
        + f" (p {p_value(test['p'])}, Holm {p_value(test['p_holm'])}: {test['verdict']})"
    )


def row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> List[str]:
    """The lines of a Markdown table."""
    return [row(header), "|" + "---|" * len(header)] + [row(cells) for cells in rows]


# --- Table 1 (experiments.reproduce) ------------------------------------------------------------

DEVELOPMENT_LABEL = (
    "**Development results: held-out folds seen while choosing.** Each unit is honest (its epoch "
    "chosen on training speakers, its held-out fold scored once), but our recipe, refit, "
    "ensembles and prior correction were adopted after looking at these same folds, so the best "
    "rows here are optimistic. The project's headline is the nested estimate "
    "(`cme-ser reproduce --protocol nested`, `{dataset}-nested.md`), where every choice is made "
    "inside the outer-training speakers."
)


def _tried_lines(summary: dict, folds: int) -> List[str]:
    tried_ = summary.get("tried") or []
    if not tried_:
        return []
    return [
        "",
        "## Tried",
        "",
        "Every variant and configuration with finished units in the work directory "
        "(configuration = sha256 of its `ModelConfig` without the seed), including any the "
        "tables above leave out.",
        "",
    ] + table(
        ["variant", "config", "units (seeds)", "WA", "UA", "in `VARIANTS`", "commits"],
        [
            [
                f"`{t['variant']}`",
                f"`{t['config_sha256'][:12]}`",
                f"{t['units']} ({len(t['seeds'])})",
                ci(t["wa"], folds),
                ci(t["ua"], folds),
                "yes" if t["in_variants"] else "no (removed)",
                ", ".join(t["commits"]),
            ]
            for t in tried_
        ],
    )


def rerendered_lines(header: dict) -> List[str]:
    """The markdown lines saying a results file was re-rendered from its archive, if it was."""
    rerendered = header.get("rerendered")
    if not rerendered:
        return []
    return [
        f"Re-rendered from the archived units (none retrained) by "
        f"`{rerendered['command']}` at commit `{rerendered['commit']}` on "
        f"{rerendered['date']}.",
        "",
    ]


def table1_markdown(summary: dict, header: dict) -> str:
    """``<dataset>.md``: a ``experiments.reproduce.summarize`` summary (with its t-SNE figure, if
    drawn) under the run's ``header``."""
    folds = summary["folds"]
    lines = [
        f"# Table 1 reproduced on {summary['dataset'].upper()}",
        "",
        DEVELOPMENT_LABEL.format(dataset=summary["dataset"]),
        "",
        f"Produced by `{header['command']}` at commit `{header['commit']}` on "
        f"{header['date']} ({header['machine']}).",
        "",
    ]
    lines += rerendered_lines(header)
    plan_ = header.get("plan")
    if plan_:
        planned = len(plan_["variants"]) * plan_["seeds"] * folds
        finished = sum(
            n
            for r in summary["rows"]
            if r["variant"] in plan_["variants"]
            for seed, n in r["units_per_seed"].items()
            if int(seed) < plan_["seeds"]
        )
        lines += [
            f"Finished {finished} of the {planned} units this command plans"
            + (
                " (re-run it to finish the rest; finished units are kept)."
                if finished < planned
                else "."
            ),
            "",
        ]
    if len(header.get("commands", [])) > 1:
        lines += [
            "Commands whose runs are included (all share the work directory, so later "
            "ones reuse finished units):",
            "",
        ]
        lines += [f"- `{c}`" for c in header["commands"]] + [""]
    over = (
        f"mean [95% CI] over n = {folds} folds (seeds averaged within each fold first; "
        f"Student t, df = {folds - 1})"
    )
    gains = (
        f"Gains are paired over the n = {folds} folds (each fold's seed-averaged "
        f"difference), with a two-sided t-test (df = {folds - 1}) and the 95% CI of the "
        "mean gain; p is raw, Holm is the Holm-adjusted p over the gains of this table; "
        "a gain *holds* if it is positive with Holm p < 0.05."
    )
    lines += [
        f"Protocol: {folds}-fold speaker-independent cross-validation; each fold's "
        "epoch is chosen on an inner validation split of the *training* speakers (every 5th), "
        "the held-out fold is scored once (`*refit*` variants then train a fresh model on all "
        "training speakers for the chosen number of epochs and score that one). "
        f"WA = overall accuracy, UA = mean per-class recall; {over}. Folds, not units, are "
        "the observations: units of one fold share its test speakers. (n = k) marks a row "
        "with fewer folds. The paper's numbers picked the best epoch on the test fold.",
        "",
    ]
    lines += table(
        ["variant", "what", "WA", "UA", "paper WA", "paper UA", "units (seeds)", "train time"],
        [
            [
                f"`{r['variant']}`",
                r["description"]
                + (
                    f" (at these seeds the same models as `{r['same_models_as']}`: identical "
                    "predictions, one result under two names)"
                    if r.get("same_models_as")
                    else ""
                ),
                ci(r["wa"], folds),
                ci(r["ua"], folds),
            ]
            + ([f"{r['paper']['wa']:.3f}", f"{r['paper']['ua']:.3f}"] if r["paper"] else ["-", "-"])
            + [f"{r['units']} ({len(r['seeds'])})", f"{r['train_seconds'] / 60:.1f} min"]
            for r in summary["rows"]
        ],
    )
    ensembles = [r for r in summary["rows"] if r.get("ensemble")]
    if ensembles:
        lines += [
            "",
            "## Seed ensembles",
            "",
            "Each fold scored by the average of the class probabilities of the variant's "
            "models of its first N seeds (each trained and epoch-selected on its own, as "
            f"above); {over}. The gain is over the mean of the same seeds' single models "
            "on the same fold. " + gains,
            "",
        ]
        lines += table(
            ["variant", "seeds", "WA", "UA", "WA gain over one model", "UA gain over one model"],
            [
                [
                    f"`{r['variant']}`",
                    len(e["seeds"]),
                    ci(e["wa"], folds),
                    ci(e["ua"], folds),
                    gain(e["gain"]["wa"]),
                    gain(e["gain"]["ua"]),
                ]
                for r in ensembles
                for e in r.get("ensembles", [r["ensemble"]])
            ],
        )
    corrections = [r["prior_correction"] for r in summary["rows"] if r.get("prior_correction")]
    if corrections:
        lines += [
            "",
            "## Prior correction, decided on validation",
            "",
            "RAVDESS has half as many neutral utterances as each other class, and UA "
            "weighs every class alike. Dividing a model's probabilities by its training "
            "class prior (`trainer.metrics.prior_corrected`) turns its decisions into "
            "those that maximise expected UA. Whether a variant adopts it is decided on "
            "the inner validation speakers only: the selected model of every unit "
            "predicts them, and the correction is adopted if it raises their mean UA "
            "(seeds averaged within each fold first). The held-out columns are reported, "
            f"not used. Scores: {over}. " + gains,
            "",
        ]
        lines += table(
            [
                "variant",
                "units",
                "validation UA",
                "corrected",
                "validation UA gain",
                "adopted",
                "held-out WA / UA",
                "corrected WA / UA",
            ],
            [
                [f"`{c['variant']}`", c["units"]]
                + [ci(c["validation"][k], folds) for k in ("ua", "corrected_ua")]
                + [gain(c["validation"]["ua_gain"]), "yes" if c["adopted"] else "no"]
                + [
                    " / ".join(ci(c["test"][k], folds) for k in pair)
                    for pair in (("wa", "ua"), ("corrected_wa", "corrected_ua"))
                ]
                for c in corrections
            ],
        )
        ensembles = [(c["variant"], e) for c in corrections for e in c.get("ensembles", [])]
        if ensembles:
            lines += [
                "",
                f"Seed ensembles with the correction: {over}. The gain is over "
                "the same ensemble without the correction, on the same fold; Holm over "
                "the gains of this table.",
                "",
            ]
            lines += table(
                [
                    "variant",
                    "seeds",
                    "WA",
                    "UA",
                    "WA gain from the correction",
                    "UA gain from the correction",
                ],
                [
                    [
                        f"`{v}`",
                        len(e["seeds"]),
                        ci(e["wa"], folds),
                        ci(e["ua"], folds),
                        gain(e["gain"]["wa"]),
                        gain(e["gain"]["ua"]),
                    ]
                    for v, e in ensembles
                ],
            )
    if summary["claims"]:
        lines += [
            "",
            "## The paper's claims (and our recipe's), tested",
            "",
            "Gain of the first variant over the second, from the (seed, fold) units both "
            f"have, averaged within each fold: mean [95% CI] over n = {folds} folds. "
            + gains
            + " Holm's family is every row of this table.",
            "",
        ]
        lines += table(
            [
                "claim",
                "metric",
                "gain [95% CI]",
                "t (df)",
                "p",
                "Holm p",
                "folds (units)",
                "fold wins/losses",
                "verdict",
            ],
            [
                [
                    c["claim"],
                    c["metric"].upper(),
                    signed_ci(c),
                    ("-" if c["t"] is None else f"{c['t']:+.2f}") + f" ({c['df']})",
                    p_value(c["p"]),
                    p_value(c["p_holm"]),
                    f"{c['n_folds']} ({c['units']})",
                    f"{c['wins']}/{c['losses']}",
                    c["verdict"],
                ]
                for c in summary["claims"]
            ],
        )
    if summary.get("tsne"):
        t = summary["tsne"]
        lines += [
            "",
            "## Utterance embeddings (the paper's Figure 2)",
            "",
            f"![t-SNE]({t['figure']})",
            "",
            f"Held-out fold {t['fold']} (seed {t['seed']}), the 128-d embedding before the "
            "classifier, t-SNE with perplexity 30. Silhouette score of the true classes in "
            "the embedding space (higher = better separated): "
            + ", ".join(f"{p['title']} {p['silhouette']:.3f}" for p in t["panels"])
            + ".",
        ]
    lines += _tried_lines(summary, folds)
    return "\n".join(lines) + "\n"
