"""How calibrated the held-out answers of an archived cross-validation are, before and after
temperature scaling fitted across its folds (``trainer.calibration.cross_fitted``): nothing is
trained, the archived units' held-out predictions are read. Prints JSON.

A model is one ``--variant`` and its ``--seeds`` (their probabilities averaged, divided by the
members' pooled training prior with ``--prior``), as ``experiments``' protocols score it. The
temperature is fitted on the ``--fit-channel`` answers (speech) of the *other* folds and scores
each fold's answers of every channel it holds, so a channel never fitted on (song) shows
whether the temperature carries over.

    python benchmarks/calibration.py --archive docs/results/ravdess-stability-units.jsonl \\
        --variant cme_refit_bag --seeds 0,1,2 --prior
    python benchmarks/calibration.py --archive docs/results/ravdess-cross-domain-units.jsonl \\
        --variant cme --seeds 0,1,2 --train speech
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.calibration import channel_calibration  # noqa: E402
from trainer.metrics import prior_corrected  # noqa: E402


def held_out_answers(rows, seeds, prior: bool):
    """fold -> (probabilities [N, K], labels [N], channels [N]) of the seeds' averaged model."""
    by_fold = defaultdict(dict)
    for row in rows:
        by_fold[row["fold"]][row["seed"]] = row
    answers = {}
    for fold, members in sorted(by_fold.items()):
        if set(members) != set(seeds):
            raise SystemExit(f"fold {fold}: seeds {sorted(members)} archived, not {seeds}")
        first = members[seeds[0]]["predictions"]
        ids = first["utterance_ids"]
        for seed in seeds:
            if members[seed]["predictions"]["utterance_ids"] != ids:
                raise SystemExit(f"fold {fold}: the members scored different utterances")
        mean = np.mean(
            [np.asarray(members[s]["predictions"]["probabilities"], np.float64) for s in seeds],
            axis=0,
        )
        if prior:
            counts = np.sum(
                [
                    members[s].get("train_class_counts") or members[s]["num_train_class_counts"]
                    for s in seeds
                ],
                axis=0,
            )
            mean = prior_corrected(mean, counts)
        channels = first.get("channels") or ["speech"] * len(ids)
        answers[fold] = (mean, np.asarray(first["labels"]), np.asarray(channels))
    return answers


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", required=True, help="a *-units.jsonl archive")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seeds", required=True, help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--prior", action="store_true", help="the prior-corrected mean")
    parser.add_argument(
        "--train",
        default=None,
        help="cross-domain archives: the training condition (speech, speech+song)",
    )
    parser.add_argument(
        "--fit-channel",
        default="speech",
        help="the channel whose answers the temperature is fitted on, or "
        "'all' (every channel the folds hold)",
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [json.loads(line) for line in Path(args.archive).read_text().splitlines() if line]
    rows = [
        r
        for r in rows
        if r["variant"] == args.variant
        and r["seed"] in seeds
        and r.get("kind", "outer") == "outer"
        and (args.train is None or r.get("train") == args.train)
    ]
    if not rows:
        raise SystemExit("no archived unit matches")
    answers = held_out_answers(rows, seeds, args.prior)
    result = channel_calibration(answers, None if args.fit_channel == "all" else args.fit_channel)
    out = {
        "archive": args.archive,
        "variant": args.variant,
        "seeds": seeds,
        "prior_correction": args.prior,
        "train": args.train,
        "fit_channel": args.fit_channel,
        "temperature_all_folds": result["temperature"],
        "fold_temperatures": {k: f["temperature"] for k, f in result["folds"].items()},
        "channels": result["by_channel"],
        "note": "each fold's answers scaled by the temperature fitted on the other folds' "
        f"{args.fit_channel} answers; ECE with 15 equal-width bins",
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
