"""Serving the CME model: TensorFlow Serving's REST and gRPC APIs (the SavedModel is exported by
``trainer.export``).

    repository.py      the <base>/<version>/ directory: loading, polling, labels, version states
    json_tensors.py    TF Serving's REST JSON format <-> arrays, with its rules and error texts
    batching.py        merging concurrent requests into one model call
    server.py          the REST API, and its handler for the HTTP front end
    http_front.py      the HTTP/1.1 front end: an event loop, h11, the request limits
    services.py        what one server process serves: repository, batcher, APIs; their end
    serve_command.py   `cme-ser serve`: its options checked, then gunicorn_app.py
    gunicorn_app.py    `cme-ser serve`: gunicorn's worker processes, each an event loop
    grpc_server.py     the gRPC API (PredictionService, ModelService)
    status.py          error codes and their HTTP statuses
    client.py          REST and gRPC client (works against `cme-ser serve` and TF Serving alike)
    predict.py         `cme-ser predict`: audio -> alignment -> model -> report
    predict_command.py `cme-ser predict`: its options, the output (text, JSON, --out, --plot)
    model_options.py   --model-dir or --url: the model `predict` and `evaluate` use
"""
