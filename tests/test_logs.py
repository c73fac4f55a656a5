"""Structured logs (monitor/telemetry/logs.py, docs/security.md): JSON lines, request context."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from silentwatch.monitor.telemetry.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    redact,
)
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import unit_rows
from .test_process import serve, stop

TOKEN = "log-test-admin-token-0123456789"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    # A private logger and stream: the root logger (pytest's caplog) is left alone.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("silentwatch.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_records_with_extras_become_one_json_object_per_line(captured):
    logger, stream = captured
    logger.info(
        "classified %d rows",
        3,
        extra={
            "request_id": "req-1",
            "rpc": "ClassifyBatch",
            "code": grpc.StatusCode.OK,
            "peer": "ipv4:127.0.0.1:5555",
            "event": "rpc",
        },
    )
    logger.warning('multi\nline\tmessage with "quotes" and ünïcode')
    first, second = lines(stream)
    assert first["msg"] == "classified 3 rows"
    assert first["level"] == "INFO" and first["logger"] == "silentwatch.test_logs"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["request_id"] == "req-1" and first["rpc"] == "ClassifyBatch"
    assert first["code"] == "OK" and first["event"] == "rpc"
    assert first["peer"] == "ipv4:127.0.0.1:5555"
    # A newline in a message cannot forge a second log line.
    assert second["msg"] == 'multi\nline\tmessage with "quotes" and ünïcode'
    assert "request_id" not in second


def test_exceptions_are_an_exc_field(captured):
    logger, stream = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("handler failed", extra={"rpc": "Classify"})
    (rec,) = lines(stream)
    assert rec["level"] == "ERROR" and rec["rpc"] == "Classify"
    assert "Traceback" in rec["exc"] and "RuntimeError: boom" in rec["exc"]


def test_only_the_known_context_keys_are_emitted(captured):
    logger, stream = captured
    embedding = np.arange(4, dtype=np.float32)
    logger.info("scored", extra={"embedding": embedding, "text": "secret text", "event": "x"})
    (rec,) = lines(stream)
    assert set(rec) == {"ts", "level", "logger", "msg", "event"}


def test_text_format_appends_context():
    rec = logging.LogRecord("a.b", logging.INFO, __file__, 1, "hello", None, None)
    rec.request_id = "r9"
    rec.rpc = "Classify"
    line = TextFormatter().format(rec)
    assert line.endswith("INFO a.b: hello [request_id=r9 rpc=Classify]")


def test_configure_logging_replaces_its_own_handler_only(capsys, monkeypatch):
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # restored after the test
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("INFO", "text")
        h = configure_logging("WARNING", "json")
        ours = [x for x in root.handlers if x not in before]
        assert ours == [h] and root.level == logging.WARNING
        # JSON mode quiets gRPC's plain-text core logs unless the operator chose a level.
        assert os.environ["GRPC_VERBOSITY"] == "ERROR"
        monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
        configure_logging("WARNING", "json")
        assert os.environ["GRPC_VERBOSITY"] == "DEBUG"
        logging.getLogger("silentwatch.x").warning("hi", extra={"event": "e"})
        warnings.warn("a python warning", UserWarning, stacklevel=1)
        err = capsys.readouterr().err.splitlines()
        recs = [json.loads(line) for line in err]
        assert recs[0]["msg"] == "hi" and recs[0]["event"] == "e"
        assert recs[1]["logger"] == "py.warnings" and "a python warning" in recs[1]["msg"]
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("INFO", "xml")  # type: ignore[arg-type]
    finally:
        for x in [x for x in root.handlers if x not in before]:
            root.removeHandler(x)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_redact_describes_without_content():
    x = np.full((2, 3), 0.123456, dtype=np.float32)
    assert redact(x) == "<float32 array shape=(2, 3)>"
    assert "0.123" not in redact(x)
    assert redact("my secret text") == "<str len=14>"
    assert redact(b"abc") == "<bytes len=3>"
    assert redact([0.5, 0.25]) == "<list len=2>"
    assert redact(3.5) == "<float>"


def test_serve_log_format_json_makes_every_stderr_line_json(bundle_dir, tmp_path):
    token = tmp_path / "admin.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    proc = serve(
        "--bundle",
        str(bundle_dir),
        "--log-format",
        "json",
        "--admin-enabled",
        "true",
        "--admin-token-file",
        str(token),
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        target = json.loads(line)["grpc"]
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            x = unit_rows(8).astype("<f4").tobytes()
            stub.ClassifyBatch(
                pb.ClassifyBatchRequest(embeddings=pb.EmbeddingMatrix(rows=8, dim=32, f32le=x)),
                timeout=10,
            )
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    msgs = " | ".join(r["msg"] for r in records)
    assert "serving classifier" in msgs and "sidecar stopped" in msgs
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    events = {r.get("event") for r in records}
    assert {"tls_off", "admin_on"} <= events
    assert TOKEN not in err
