"""Which Beam options each pipeline stage runs with (``pipeline.pipeline``)."""

import pytest

from pipeline.pipeline import IN_PROCESS_BEAM_ARGS, runs_direct
from pipeline.runner import local_pipeline
from preprocessing.beam_pipeline import default_beam_args


def stage_args(pipeline) -> dict:
    """Each Beam stage's options as its executor gets them (the pipeline's, then its own: Beam
    takes the last value of an option)."""
    return {
        c.id: list(c.executor_spec.beam_pipeline_args)
        for c in pipeline.components
        if hasattr(c.executor_spec, "beam_pipeline_args")
    }


def test_small_stages_run_in_process_and_the_corpus_step_keeps_its_workers(tmp_path):
    pipeline = local_pipeline(
        tmp_path / "out", data_dir=tmp_path, embeddings_path="glove", num_folds=2
    )
    assert pipeline.beam_pipeline_args == default_beam_args()  # multi-processing workers
    assert "--direct_running_mode=multi_processing" in pipeline.beam_pipeline_args
    small = default_beam_args() + IN_PROCESS_BEAM_ARGS
    assert stage_args(pipeline) == {
        "CorpusExampleGen": default_beam_args(),
        "StatisticsGen": small,
        "Evaluator.fold0": small,
        "Evaluator.fold1": small,
    }


def test_other_runners_get_exactly_the_options_given(tmp_path):
    flink = ["--runner=FlinkRunner", "--flink_master=localhost:8081"]
    pipeline = local_pipeline(
        tmp_path / "out",
        data_dir=tmp_path,
        embeddings_path="glove",
        num_folds=2,
        beam_pipeline_args=flink,
    )
    assert pipeline.beam_pipeline_args == flink
    assert set(map(tuple, stage_args(pipeline).values())) == {tuple(flink)}


@pytest.mark.parametrize(
    "args, direct",
    [
        (None, True),
        ([], True),
        (["--runner=DirectRunner"], True),
        (["--runner=direct"], True),
        (["--runner=DataflowRunner"], False),
        (["--runner=FlinkRunner", "--runner=DirectRunner"], True),  # Beam takes the last one
    ],
)
def test_runs_direct(args, direct):
    assert runs_direct(args) is direct
