"""The model options of ``cme-ser predict`` and ``evaluate``: ``--model-dir`` (a SavedModel,
loaded in-process) or ``--url`` (a served model, with ``--model-name``, ``--model-version``,
``--timeout``), opened by :func:`open_model`; :func:`model_errors` turns a served model that
cannot be reached, or refuses, into a one-line UsageError."""

from __future__ import annotations

import contextlib

from infra.usage_error import UsageError


def open_model(args, min_confidence: float = 0.0) -> tuple:
    """``(model, where)``: the SavedModel --model-dir names, loaded in-process, or the model
    served at --url (--model-name, --model-version, --timeout); answers below
    ``min_confidence`` are ``UNCERTAIN`` (``serving.client``)."""
    from serving import predict as predicting
    from serving.client import open_client

    if args.model_dir:
        try:
            model = predicting.LocalModel(args.model_dir, min_confidence=min_confidence)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from error
        return model, str(model.path)
    try:
        model = open_client(
            args.url,
            args.model_name,
            version=args.model_version,
            timeout=args.timeout,  # grpc://host:port: GrpcClient
            min_confidence=min_confidence,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    return model, f"{model.url}{model.model_path}"


@contextlib.contextmanager
def model_errors(where: str):
    """A served model that cannot be reached, or refuses, as a one-line usage error."""
    from serving.client import ServingRequestError

    try:
        yield
    except OSError as error:
        raise UsageError(
            f"cannot reach {where}: {error.strerror or error} (is `cme-ser serve` "
            f"or TF Serving running there?)"
        ) from error
    except ServingRequestError as error:
        raise UsageError(f"{where}: {error.message}") from error
