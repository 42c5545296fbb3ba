"""The names of the serving SavedModel's signatures (``trainer.export`` builds them).

Standard library only, so clients that need no TensorFlow (``serving.client``) can import them.
"""

SERVING_DEFAULT = "serving_default"
PREDICT_WAVEFORM = "predict_waveform"
PREDICT_WAVEFORM_BYTES = "predict_waveform_bytes"
