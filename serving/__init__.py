"""Serving the CME model: TensorFlow Serving's REST API (the SavedModel is exported by
``trainer.export``).

    repository.py    the <base>/<version>/ directory: loading, polling, labels, version states
    json_tensors.py  TF Serving's REST JSON format <-> arrays, with its rules and error texts
    validation.py    checks of predict_waveform inputs before the graph runs
    batching.py      merging concurrent requests into one model call
    server.py        the HTTP server (`cme-ser serve`)
    status.py        error codes and their HTTP statuses
    client.py        REST client (works against `cme-ser serve` and TF Serving alike)
    predict.py       `cme-ser predict`: audio -> alignment -> model -> report
"""
