"""The shipped default (issue 12): what `cme-ser run` / `make run` and the TFX CLI's
pipeline/local_runner.py train and push is ``trainer.config.SHIPPED``, and that is the candidate
the nested cross-validation's pre-registered rule chose. Nothing here trains."""

import hashlib
import json
from pathlib import Path

import pytest

from cli.main import build_parser
from pipeline import local_runner
from trainer.config import SHIPPED, VARIANTS, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_default_is_the_nested_rules_choice():
    results_dir = ROOT / "docs" / "results" / "nested-speech-song"
    results = json.loads((results_dir / "ravdess-nested.json").read_text())
    chosen = results["shipped_default"]["candidate"]
    selection = json.loads((ROOT / "docs" / "selection-speech-song.json").read_text())
    assert (
        results["selection"]["sha256"]
        == hashlib.sha256((ROOT / "docs" / "selection-speech-song.json").read_bytes()).hexdigest()
    )
    candidate = next(c for c in selection["candidates"] if c["name"] == chosen)
    assert candidate["variant"] == SHIPPED["variant"] and SHIPPED["variant"] in VARIANTS
    assert candidate.get("prior_correction", False) == SHIPPED["prior_correction"]
    # The size of the ensemble is the candidate's; its seeds are not: the nested run drew
    # 100-102 (seeds no earlier run had used), a run draws seed .. seed + N - 1 of its --seed.
    # A seed is a draw, not a choice: the estimate is the recipe's.
    assert len(candidate["seeds"]) == SHIPPED["ensemble"]


def test_cme_ser_run_defaults_to_the_shipped_model():
    args = build_parser().parse_args(["run"])
    assert (args.variant, args.ensemble, args.prior_correction, args.seed) == (
        SHIPPED["variant"],
        SHIPPED["ensemble"],
        SHIPPED["prior_correction"],
        0,
    )
    args = build_parser().parse_args(
        ["run", "--variant", "cme", "--ensemble", "1", "--no-prior-correction"]
    )
    assert (args.variant, args.ensemble, args.prior_correction) == ("cme", 1, False)


def test_the_local_runner_defaults_to_the_shipped_model():
    settings = local_runner.model_settings({})
    assert settings["config"].variant == SHIPPED["variant"]
    assert settings["ensemble_size"] == SHIPPED["ensemble"]
    assert settings["prior_correction"] is SHIPPED["prior_correction"]
    small = local_runner.model_settings(
        {
            "CME_SER_VARIANT": "cme",
            "CME_SER_ENSEMBLE": "1",
            "CME_SER_PRIOR_CORRECTION": "Off",
            "CME_SER_EPOCHS": "2",
        }
    )
    assert (
        small["config"].variant,
        small["config"].epochs,
        small["ensemble_size"],
        small["prior_correction"],
    ) == ("cme", 2, 1, False)
    assert local_runner.model_settings({"CME_SER_PRIOR_CORRECTION": "1"})["prior_correction"]
    with pytest.raises(ValueError, match="CME_SER_PRIOR_CORRECTION must be one of"):
        local_runner.model_settings({"CME_SER_PRIOR_CORRECTION": "maybe"})


def test_the_pipeline_builds_the_shipped_model_unless_told_otherwise(tmp_path):
    """``trainer.config.SHIPPED`` is the pipeline's only default: every Trainer's run_fn gets
    the shipped variant, ensemble and correction, and its own node id (its progress line)."""
    from pipeline.runner import local_pipeline

    pipeline = local_pipeline(
        tmp_path / "out", data_dir=tmp_path, embeddings_path="glove", num_folds=2
    )
    trainers = [c for c in pipeline.components if c.id.startswith("Trainer.")]
    assert len(trainers) == 3
    for trainer in trainers:
        custom = json.loads(trainer.exec_properties["custom_config"])
        assert ModelConfig.from_json(custom["model_config"]).variant == SHIPPED["variant"]
        assert custom["ensemble_size"] == SHIPPED["ensemble"]
        assert custom["prior_correction"] is SHIPPED["prior_correction"]
        assert custom["node_id"] == trainer.id


@pytest.mark.parametrize("prior_correction", [True, False])
def test_prior_correction_reaches_every_trainer(tmp_path, prior_correction):
    from pipeline.runner import local_pipeline

    pipeline = local_pipeline(
        tmp_path / "out",
        data_dir=tmp_path,
        embeddings_path="glove",
        num_folds=2,
        ensemble_size=3,
        prior_correction=prior_correction,
    )
    trainers = [c for c in pipeline.components if c.id.startswith("Trainer.")]
    assert sorted(t.id for t in trainers) == ["Trainer.final", "Trainer.fold0", "Trainer.fold1"]
    for trainer in trainers:
        custom = json.loads(trainer.exec_properties["custom_config"])
        assert custom["prior_correction"] is prior_correction
        assert custom["ensemble_size"] == 3


def test_a_variants_training_channels_and_epochs_are_its_own_unless_asked():
    """A variant trained on speech + song reads both channels by default (`cme-ser run`, the
    TFX CLI's runner), `--channels` replaces them, and a fixed-schedule variant keeps its
    length unless `--epochs` is given."""
    from pipeline.run_command import epochs_override, training_channels
    from trainer.config import variant_config

    song = variant_config("cme_fixed20_song")
    assert training_channels(song, None) == (song, ("speech", "song"))
    config, channels = training_channels(song, ("speech",))
    assert config.train_channels == ("speech",) and channels is None  # the default's cache key
    config, channels = training_channels(variant_config("cme"), ("song",))
    assert config.train_channels == channels == ("song",)
    settings = local_runner.model_settings({"CME_SER_VARIANT": "cme_fixed20_song"})
    assert settings["channels"] == ("speech", "song")
    assert (
        local_runner.model_settings({})["channels"]
        == training_channels(variant_config(SHIPPED["variant"]), None)[1]
    )
    assert build_parser().parse_args(["run"]).epochs is None
    fixed = variant_config("cme_fixed30", **epochs_override(None))
    assert fixed.epochs == 30
    assert variant_config("cme_fixed30", **epochs_override(5)).epochs == 5
    with pytest.raises(ValueError, match="train_channels"):
        ModelConfig(train_channels=())
