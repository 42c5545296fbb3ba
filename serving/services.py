"""What one ``cme-ser serve`` worker process serves, and its orderly end (serving.gunicorn_app
builds it after the fork and closes it in gunicorn's ``worker_exit`` hook)."""

from __future__ import annotations

from typing import Optional

from serving.batching import Batcher
from serving.grpc_server import GrpcServer
from serving.repository import ModelRepository
from serving.server import DEFAULT_MAX_BODY_BYTES, RestApi


class Services:
    """What one server process serves: the repository (first load done, polling started), the
    batcher (``batching``; off by default, as TF Serving's ``--enable_batching``), the
    :class:`RestApi` and, with ``grpc_host``, a started :class:`serving.grpc_server.GrpcServer`
    on the same repository and batcher. :meth:`close` stops and joins all their threads."""

    def __init__(
        self,
        base_path,
        model_name: str,
        *,
        poll_seconds: float = 1.0,
        labels_file=None,
        num_latest: int = 1,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        batching: bool = False,
        max_batch_size: int = 32,
        batch_timeout_ms: float = 2.0,
        cors: bool = False,
        grpc_host: Optional[str] = None,
        grpc_port: int = 0,
        grpc_reuse_port: bool = False,
    ):
        self.repository = ModelRepository(
            base_path, model_name, num_latest=num_latest, labels_file=labels_file
        )
        self.repository.start_polling(poll_seconds)
        self.batcher = (
            Batcher(max_batch_size=max_batch_size, timeout_s=batch_timeout_ms / 1000.0)
            if batching
            else None
        )
        self.api = RestApi(
            self.repository, batcher=self.batcher, cors=cors, max_body_bytes=max_body_bytes
        )
        self.grpc = None
        if grpc_host is not None:
            try:
                self.grpc = GrpcServer(
                    self.repository,
                    batcher=self.batcher,
                    host=grpc_host,
                    port=grpc_port,
                    max_message_bytes=max_body_bytes,
                    reuse_port=grpc_reuse_port,
                ).start()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """The gRPC server first (its calls finish, its threads are joined), then the batcher
        and the poller; the models are released. No thread of these is left inside
        TensorFlow for the interpreter's teardown. Idempotent."""
        if self.grpc is not None:
            self.grpc.close()
        if self.batcher is not None:
            self.batcher.close()
        self.repository.stop()
