"""`silentwatch serve` as a real process: start-up errors, SIGTERM drain, configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from silentwatch.monitor.config import ConfigError, load_settings
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import unit_rows

ROOT = Path(__file__).resolve().parents[1]


def serve(*args: str, env: dict | None = None, drop_env: tuple[str, ...] = ()) -> subprocess.Popen:
    """`silentwatch serve` on free ports; ``env`` adds variables, ``drop_env`` removes some."""
    base = {k: v for k, v in os.environ.items() if k not in drop_env}
    return subprocess.Popen(
        [sys.executable, "-m", "silentwatch", "serve", "--port", "0", "--metrics-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """SIGTERM, wait for the exit and return stderr; a process that does not exit in
    ``timeout`` is killed (and the timeout raised), so no test leaves one behind."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise


def wait_serving(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    event = json.loads(line)
    assert event["event"] == "serving"
    return event


def test_missing_bundle_fails_fast_with_a_clear_message(tmp_path):
    proc = serve("--bundle", str(tmp_path / "nope"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "does not exist" in err and "silentwatch bundle train" in err
    assert "Traceback" not in err


def test_broken_bundle_fails_fast(bundle_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in bundle_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "classifier.npz").read_bytes()
    (broken / "classifier.npz").write_bytes(data[: len(data) // 2])
    proc = serve("--bundle", str(broken))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "classifier.npz" in err and "sha256" in err


def test_bad_config_names_the_key(bundle_dir):
    proc = serve("--bundle", str(bundle_dir), "--workers", "zero")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "workers" in err


def test_serve_help_lists_every_option():
    res = subprocess.run(
        [sys.executable, "-m", "silentwatch", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "--confidence-band" in res.stdout and "14%" in res.stdout


def test_port_in_use_fails_with_one_line(bundle_dir):
    first = serve("--bundle", str(bundle_dir))
    try:
        port = wait_serving(first)["grpc"].rsplit(":", 1)[1]
        second = serve("--bundle", str(bundle_dir), "--port", port)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert "cannot bind" in err and port in err
        assert "Traceback" not in err
    finally:
        first.terminate()
        first.communicate(timeout=30)


def test_sigterm_drains_then_exits_cleanly(bundle_dir):
    proc = serve("--bundle", str(bundle_dir), "--drain-seconds", "1.5", "--grace-seconds", "5")
    try:
        target = wait_serving(proc)["grpc"]
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            x = unit_rows(64).astype("<f4").tobytes()
            req = pb.ClassifyBatchRequest(embeddings=pb.EmbeddingMatrix(rows=64, dim=32, f32le=x))
            stub.ClassifyBatch(req)
            codes: list[grpc.StatusCode] = []
            stop = threading.Event()

            def hammer() -> None:
                while not stop.is_set():
                    try:
                        stub.ClassifyBatch(req, timeout=5)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
                        return  # the server has closed: nothing more to send

            t = threading.Thread(target=hammer)
            t.start()
            time.sleep(0.2)
            n_before = len(codes)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(service="")).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            proc.wait(timeout=20)
            stop.set()
            t.join(10)
        assert proc.returncode == 0
        # Calls kept succeeding while draining; the single refusal is the closed server's, at the
        # end (calls that reach a stopping gRPC server are refused UNAVAILABLE or CANCELLED).
        assert codes.count(grpc.StatusCode.OK) > n_before
        assert set(codes[:-1]) == {grpc.StatusCode.OK}
        assert codes[-1] in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_settings_precedence_flags_env_yaml(bundle_dir, tmp_path, monkeypatch):
    cfg = tmp_path / "sw.yaml"
    cfg.write_text(f"bundle: {bundle_dir}\nworkers: 3\nstore_capacity: 77\nport: 6000\n")
    monkeypatch.setenv("SILENTWATCH_STORE_CAPACITY", "88")
    s = load_settings(cfg, port="7000")
    assert (s.workers, s.store_capacity, s.port) == (3, 88, 7000)
    assert s.host == "127.0.0.1" and s.metrics_host == "127.0.0.1"  # loopback by default
    cfg.write_text(f"bundle: {bundle_dir}\nstore_capacty: 5\n")
    with pytest.raises(ConfigError, match="store_capacty"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_generated_stubs_match_the_proto(tmp_path):
    from grpc_tools import protoc

    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto/silentwatch/v1/monitor.proto"),
        ]
    )
    assert rc == 0
    for name in ("monitor_pb2.py", "monitor_pb2.pyi", "monitor_pb2_grpc.py"):
        fresh = (tmp_path / "silentwatch/v1" / name).read_text()
        committed = (ROOT / "silentwatch/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto`"


def test_the_sidecar_never_imports_torch_or_ray():
    code = (
        "import sys, silentwatch.monitor.serving.server, silentwatch.cli, silentwatch.demo.run; "
        "bad = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
