"""Exports any TF Serving can load (issue 13, section 5).

* No ``Cudnn*`` op anywhere in the exported graph, whatever device training ran on. There is
  no GPU here, so the GPU case is made by construction: Keras' TensorFlow backend asks
  ``keras.src.backend.tensorflow.rnn._is_gpu_available()`` at trace time whether to emit
  ``CudnnRNNV3``; it is patched to say yes. The same patch makes a plain trace of the model hold
  ``CudnnRNNV3`` (so the scan can see it), and the export made under it holds none, and
  computes the same outputs as the Keras model.
* A TF1 Session, as TF Serving loads a SavedModel, restores every variable the signatures read.
* The waveform input checks are core ``Assert`` ops (no Python callback).
* Every export carries ``assets.extra/tf_serving_warmup_requests`` (PredictionLog records)
  that replay through the loaded signatures, and ``cme-ser serve``'s loader replays them.
"""

import importlib
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from serving_support import ANGRY, KIDS, example_bytes, export, needs_ravdess, small_model
from tensorflow.core.protobuf import saved_model_pb2

from preprocessing import records
from serving import repository
from trainer.export import portable_recurrent_layers, read_warmup_requests
from trainer.signature_names import (
    CLASS_OUTPUTS,
    EXCITATION_OUTPUTS,
    PREDICT_WAVEFORM,
    SERVING_DEFAULT,
)

pytestmark = needs_ravdess
# The module, not the function of the same name its package exports.
keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")


def graph_op_types(graph_def) -> set:
    """Op types of a GraphDef's nodes and of every function in its library."""
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def saved_model_op_types(export_dir) -> set:
    saved = saved_model_pb2.SavedModel.FromString(
        tf.io.gfile.GFile(f"{export_dir}/saved_model.pb", "rb").read()
    )
    ops = set()
    for meta_graph in saved.meta_graphs:
        ops |= graph_op_types(meta_graph.graph_def)
    return ops


def gpu_visible():
    """Keras' trace-time question "is a GPU visible?" answered yes."""
    return mock.patch.object(keras_tf_rnn, "_is_gpu_available", return_value=True)


@pytest.fixture(scope="module")
def gpu_export(tmp_path_factory):
    model = small_model()
    with gpu_visible():
        info = export(model, tmp_path_factory.mktemp("gpu_export") / "cme" / "1")
    return model, info


def test_the_patch_makes_keras_trace_cudnn_ops(gpu_export):
    model, _ = gpu_export
    specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in model.input.items()}
    with gpu_visible():
        traced = tf.function(lambda inputs: model(inputs, training=False))
        graph_def = traced.get_concrete_function(specs).graph.as_graph_def()
    assert any(op.startswith("Cudnn") for op in graph_op_types(graph_def))


def test_export_traced_with_a_gpu_has_no_cudnn_op_and_same_outputs(gpu_export):
    model, info = gpu_export
    ops = saved_model_op_types(info["path"])
    assert not sorted(op for op in ops if op.startswith("Cudnn"))
    assert ops & {"While", "StatelessWhile"}  # the generic LSTM loop is what got exported
    # The recurrent layers are restored after the export.
    assert {
        layer.use_cudnn for layer in model._flatten_layers() if hasattr(layer, "use_cudnn")
    } == {"auto"}

    serialized = example_bytes(ANGRY, KIDS)
    inputs = records.to_model_inputs(
        records.parse_examples(tf.constant([serialized]), info["word_dim"])
    )
    expected = model(inputs, training=False).numpy()
    loaded = tf.saved_model.load(info["path"])
    got = loaded.signatures[SERVING_DEFAULT](examples=tf.constant([serialized]))
    np.testing.assert_allclose(got["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_input_checks_are_core_asserts_in_the_export(gpu_export):
    """trainer.export.check_waveform_inputs: Assert ops TF Serving has, no Python callback."""
    _, info = gpu_export
    ops = saved_model_op_types(info["path"])
    assert "Assert" in ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_a_tf1_session_restores_every_variable_the_signatures_read(gpu_export):
    """TF Serving loads a SavedModel into a Session and runs its restore op: the variables the
    signature functions capture must be the ones restored (the TF2 loader maps them by object
    graph and would not notice). Same probabilities from both loaders."""
    _, info = gpu_export
    serialized = example_bytes(ANGRY, KIDS)
    expected = (
        tf.saved_model.load(info["path"])
        .signatures[SERVING_DEFAULT](examples=tf.constant([serialized]))["probabilities"]
        .numpy()
    )
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], info["path"])
        signature = meta.signature_def[SERVING_DEFAULT]
        got = session.run(
            signature.outputs["probabilities"].name,
            {signature.inputs["examples"].name: [serialized]},
        )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_portable_recurrent_layers_reaches_both_directions_and_restores(gpu_export):
    model, _ = gpu_export
    with portable_recurrent_layers(model) as changed:
        assert len(changed) == 2  # the BiLSTM's forward and backward LSTMs
        assert all(layer.use_cudnn is False for layer in changed)
    assert all(layer.use_cudnn == "auto" for layer in changed)


def test_export_carries_warmup_requests_that_replay(gpu_export):
    _, info = gpu_export
    logs = read_warmup_requests(info["path"])
    assert [entry.predict_log.request.model_spec.signature_name for entry in logs] == [
        PREDICT_WAVEFORM,
        SERVING_DEFAULT,
    ]
    loaded = tf.saved_model.load(info["path"])
    expected = {
        PREDICT_WAVEFORM: set(CLASS_OUTPUTS) | set(EXCITATION_OUTPUTS),
        SERVING_DEFAULT: set(CLASS_OUTPUTS),
    }
    for entry in logs:
        request = entry.predict_log.request
        name = request.model_spec.signature_name
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        assert set(feeds) == set(loaded.signatures[name].structured_input_signature[1])
        out = loaded.signatures[name](**feeds)
        assert set(out) == expected[name]
        assert out["probabilities"].shape == (1, 4)
    # A realistic request: a 2 s utterance of 6 timed words.
    waveform = tf.make_ndarray(logs[0].predict_log.request.inputs["waveform"])
    assert waveform.shape == (1, 32000) and 0.05 < np.abs(waveform).max() <= 1.0


def test_the_serving_loader_replays_the_warmup_requests(gpu_export):
    _, info = gpu_export
    from pathlib import Path

    with mock.patch.object(repository, "run_warmup", wraps=repository.run_warmup) as warmup:
        version = repository.load_version(1, Path(info["path"]))
    assert warmup.call_count == 1
    assert repository.run_warmup(Path(info["path"]), version.signatures) == 2
    assert set(version.signatures) >= {SERVING_DEFAULT, PREDICT_WAVEFORM}


def test_a_failing_warmup_request_fails_the_load(gpu_export, tmp_path):
    import shutil
    from pathlib import Path

    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from trainer.export import write_warmup_requests

    _, info = gpu_export
    copy = tmp_path / "2"
    shutil.copytree(info["path"], copy)
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = SERVING_DEFAULT
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b"not a record"]))
    write_warmup_requests(
        copy,
        [
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            ).SerializeToString()
        ],
    )
    with pytest.raises(ValueError, match="warm-up request 0"):
        repository.load_version(2, Path(copy))
