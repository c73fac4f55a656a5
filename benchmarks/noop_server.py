"""A gRPC server with the sidecar's wire and server settings that does no work: the
transport floor of a Python gRPC sidecar (issue 16).

Classify and ClassifyBatch return prebuilt replies of the size the sidecar sends (one head:
p_unsafe, flagged, confidence per row); GetStatus returns an empty status. The request is
still received, parsed into a ``ClassifyBatchRequest`` by grpcio (that is the transport)
and dropped. ``benchmarks/serving.py`` runs it beside the sidecar's modes, pinned to the
same CPU, so "served / transport floor" says how much of the served cost is ours.

    python benchmarks/noop_server.py --rows 1024   # prints {"grpc": "127.0.0.1:PORT"}
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from concurrent import futures

import grpc
import numpy as np

from silentwatch.monitor.serving.wire import parse_request
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc


def replies(rows: int) -> tuple[pb.ClassifyResponse, pb.ClassifyBatchResponse]:
    """One-head replies as the sidecar builds them, for one row and for ``rows`` rows."""
    p = np.random.default_rng(0).random(rows).astype(np.float32)
    batch = pb.ClassifyBatchResponse(classifier_version="noop")
    batch.p_unsafe.extend(p.tolist())
    batch.flagged.extend((p >= 0.5).tolist())
    batch.confidence.extend(np.maximum(p, 1 - p).tolist())
    one = pb.ClassifyResponse(
        p_unsafe=float(p[0]), flagged=bool(p[0] >= 0.5), classifier_version="noop"
    )
    return one, batch


class NoopMonitor(pb_grpc.MonitorServicer):
    """The Monitor service's three benchmarked methods, answering without work (the names
    are the gRPC methods')."""

    def __init__(self, rows: int) -> None:
        self.one, self.batch = replies(rows)
        self.status = pb.GetStatusResponse()

    def Classify(self, request, context):
        return self.one

    def ClassifyBatch(self, request, context):
        return self.batch

    def GetStatus(self, request, context):
        return self.status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1024, help="rows of the prebuilt batch reply")
    ap.add_argument("--workers", type=int, default=8, help="handler threads (the sidecar's)")
    ap.add_argument("--max-message-bytes", type=int, default=256 << 20)
    ap.add_argument(
        "--parse",
        choices=["raw", "grpcio"],
        default="raw",
        help="raw: the handler parses the request bytes, as the sidecar does; grpcio: grpcio's "
        "request_deserializer does",
    )
    a = ap.parse_args()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=a.workers, thread_name_prefix="noop-rpc"),
        options=[
            ("grpc.max_receive_message_length", a.max_message_bytes),
            ("grpc.max_send_message_length", a.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    monitor = NoopMonitor(a.rows)
    if a.parse == "grpcio":
        pb_grpc.add_MonitorServicer_to_server(monitor, server)
    else:
        # As the sidecar does (wire.MalformedRequestGuard): grpcio hands over the raw bytes
        # and the handler parses them.
        def raw(method, cls):
            # Parsed as the sidecar's guard does: a batch whose embeddings come first
            # without copying them (wire.parse_request).
            return grpc.unary_unary_rpc_method_handler(
                lambda b, ctx: method(parse_request(b, cls), ctx),
                request_deserializer=None,
                response_serializer=lambda m: m.SerializeToString(),
            )

        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("silentwatch.v1.Monitor", {
                "Classify": raw(monitor.Classify, pb.ClassifyRequest),
                "ClassifyBatch": raw(monitor.ClassifyBatch, pb.ClassifyBatchRequest),
                "GetStatus": raw(monitor.GetStatus, pb.GetStatusRequest),
            })]
        )  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({"grpc": f"127.0.0.1:{port}"}), flush=True)
    stop.wait()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
