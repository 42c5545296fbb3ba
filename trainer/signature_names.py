"""The names of the serving SavedModel's signatures, their inputs and outputs (``trainer.export``
builds them).

Standard library only, so clients that need no TensorFlow (``serving.client``) can import them.
"""

SERVING_DEFAULT = "serving_default"
PREDICT_WAVEFORM = "predict_waveform"
PREDICT_WAVEFORM_BYTES = "predict_waveform_bytes"
# The waveform signatures' inputs, and what every signature answers.
WAVEFORM_INPUTS = ("waveform", "num_samples", "words", "word_start_s", "word_end_s")
WAVEFORM_BYTES_INPUTS = ("waveform_bytes",) + WAVEFORM_INPUTS[1:]
CLASS_OUTPUTS = ("probabilities", "class_ids", "classes", "class_names")
EXCITATION_OUTPUTS = ("acoustic_excitation", "semantic_excitation")
