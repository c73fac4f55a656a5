"""Refused requests are logged with their request id, rate-limited, and without payloads."""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest

from silentwatch.monitor.serving import rpc
from silentwatch.monitor.telemetry.logs import JsonFormatter
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM


def test_a_refusal_is_one_json_line_with_the_request_id_and_no_embedding(
    sidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc, "refusals", rpc.RefusalLog(every=3600))
    caplog.set_level(logging.WARNING, logger="silentwatch.monitor.serving.rpc")
    x = np.full(DIM + 1, 0.123456, dtype=np.float32)  # wrong dimension
    with grpc.insecure_channel(sidecar.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        for i in range(5):
            with pytest.raises(grpc.RpcError):
                stub.Classify(
                    pb.ClassifyRequest(
                        embedding=pb.Embedding(f32le=x.tobytes()), request_id=f"req-{i}"
                    ),
                    metadata=[("x-request-id", "trace-abc")] if i == 0 else None,
                    timeout=10,
                )
    records = [r for r in caplog.records if getattr(r, "event", "") == "request_refused"]
    assert len(records) == 1  # the other four are held back and counted, not logged
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "trace-abc" and line["rpc"] == "Classify"
    assert line["code"] == "INVALID_ARGUMENT" and line["peer"]
    assert "0.123" not in json.dumps(line)  # never the embedding's values


def test_held_refusals_are_counted_into_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Ctx:
        def invocation_metadata(self):
            return ()

        def peer(self):
            return "ipv4:127.0.0.1:1"

    refusals = rpc.RefusalLog(every=0.0)
    caplog.set_level(logging.WARNING, logger="silentwatch.monitor.serving.rpc")
    req = pb.ClassifyBatchRequest(request_ids=["a\nb", "c"])
    refusals("ClassifyBatch", grpc.StatusCode.INVALID_ARGUMENT, "bad", req, Ctx())
    rec = caplog.records[-1]
    assert rec.request_id == "a?b"  # control characters cannot forge log lines
    slow = rpc.RefusalLog(every=3600)
    for _ in range(3):
        slow("Classify", grpc.StatusCode.INVALID_ARGUMENT, "bad", req, Ctx())
    slow._last.clear()
    slow("Classify", grpc.StatusCode.INVALID_ARGUMENT, "bad", req, Ctx())
    assert "[+2 more like it" in caplog.records[-1].getMessage()
