"""Faults: kill -9 loses no accepted label, SIGTERM drains and snapshots, reloads are atomic,
and a store that cannot be written is counted and logged while serving goes on."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .benchmark_scripts import load_benchmark
from .conftest import DIM, unit_rows
from .test_process import serve, stop, wait_serving

SIDECAR_PROCESS = load_benchmark("sidecar_process")

TOKEN = "admin-token-for-tests-0123456789"


def status(target: str) -> pb.GetStatusResponse:
    with grpc.insecure_channel(target) as ch:
        return pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=10)


def metric(url: str, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pat = re.compile(rf"^{re.escape(name)}{re.escape(labels)}\s+(\S+)$", re.M)
    m = pat.search(text)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


class Traffic:
    """Classify batches and label half of them one round later, counting what was accepted."""

    def __init__(self, target: str, prefix: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.MonitorStub(self.channel)
        self.prefix = prefix
        self.round = 0
        self.joined = 0  # labels the sidecar said it joined, in OK responses only
        # Labels of a SubmitLabels call not answered yet: a kill can land after the sidecar
        # committed them and before the reply left, so they may or may not be in the state.
        self.in_flight = 0
        self.unlabelled: list[str] = []  # recorded ids never labelled
        self._previous: list[str] = []

    def step(self, rows: int = 32) -> None:
        ids = [f"{self.prefix}-{self.round}-{i}" for i in range(rows)]
        x = unit_rows(rows, seed=self.round)
        self.stub.ClassifyBatch(
            pb.ClassifyBatchRequest(
                embeddings=pb.EmbeddingMatrix(rows=rows, dim=DIM, f32le=x.tobytes()),
                request_ids=ids,
                embedder_version="v1",
            ),
            timeout=10,
        )
        if self._previous:
            half = len(self._previous) // 2
            labels = [
                pb.Label(request_id=r, unsafe=i % 3 == 0)
                for i, r in enumerate(self._previous[:half])
            ]
            self.in_flight = len(labels)
            res = self.stub.SubmitLabels(pb.SubmitLabelsRequest(labels=labels), timeout=10)
            self.in_flight = 0
            self.joined += res.joined
            self.unlabelled += self._previous[half:]
        self._previous = ids
        self.round += 1

    def close(self) -> None:
        self.unlabelled += self._previous
        self.channel.close()


def test_kill_9_mid_stream_loses_no_accepted_label(bundle_dir: Path, tmp_path: Path) -> None:
    """Every label joined in an OK response before kill -9 is in the calibration after restart,
    and predictions recorded before the kill still join labels sent after it."""
    state = tmp_path / "state"
    args = (
        "--bundle",
        str(bundle_dir),
        "--state-dir",
        str(state),
        "--snapshot-interval-seconds",
        "0.5",
    )
    proc = serve(*args)
    target = wait_serving(proc)["grpc"]
    traffic = Traffic(target, "k9")
    halt = threading.Event()
    errors: list[grpc.RpcError] = []

    def stream() -> None:
        while not halt.is_set():
            try:
                traffic.step()
            except grpc.RpcError as exc:  # the kill lands mid-call: not accepted, not counted
                errors.append(exc)
                return

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 60
    # Run past at least two snapshots so some labels are in a snapshot and some are not.
    while (traffic.round < 40 or status(target).store.snapshots_written < 2) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    before = status(target)
    assert before.store.durable and before.store.backend == "sqlite"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    halt.set()
    t.join(timeout=30)
    traffic.close()
    assert traffic.joined > 0

    proc2 = serve(*args)
    try:
        target2 = wait_serving(proc2)["grpc"]
        after = status(target2)
        # The counts compared: every accepted label is folded in again, none twice; the
        # call the kill interrupted may have committed its labels before its reply was lost.
        restored = after.labelled.cumulative.n
        assert traffic.joined <= restored <= traffic.joined + traffic.in_flight
        # Replayed: the labels joined after the last snapshot, a part of all joined ones.
        assert after.store.labels_replayed_at_start <= restored
        # Predictions recorded before the kill still join (the newest few may have been
        # recorded by the call the kill interrupted: those were never answered).
        with grpc.insecure_channel(target2) as ch:
            sent = traffic.unlabelled[:-32]
            # In requests under max_batch_rows: how many were recorded depends on the speed.
            joined = SIDECAR_PROCESS.submit_unsafe_labels(pb_grpc.MonitorStub(ch), sent, timeout=30)
        assert joined == len(sent)
        deadline = time.monotonic() + 10
        while status(target2).labelled.cumulative.n != restored + len(sent):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop(proc2)


def test_sigterm_drains_and_writes_a_final_snapshot(bundle_dir: Path, tmp_path: Path) -> None:
    """After SIGTERM the process exits 0 and its last snapshot covers every joined label, so
    the next start replays none."""
    args = (
        "--bundle",
        str(bundle_dir),
        "--state-dir",
        str(tmp_path / "s"),
        "--snapshot-interval-seconds",
        "3600",
    )
    proc = serve(*args)
    target = wait_serving(proc)["grpc"]
    traffic = Traffic(target, "term")
    for _ in range(20):
        traffic.step()
    traffic.close()
    err = stop(proc, timeout=60)
    assert proc.returncode == 0, err
    proc2 = serve(*args)
    try:
        after = status(wait_serving(proc2)["grpc"])
        assert after.labelled.cumulative.n == traffic.joined > 0
        assert after.store.labels_replayed_at_start == 0
        assert after.detection.windows_evaluated > 0  # the windows came back too
    finally:
        stop(proc2)


def test_an_old_window_snapshot_is_discarded_and_logged_but_labels_stay(
    sidecar_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "aged"
    sc = sidecar_factory(state_dir=state, snapshot_max_age_seconds=0.05)
    traffic = Traffic(sc.grpc_target, "aged")
    for _ in range(10):
        traffic.step()
    traffic.close()
    sc.stop(grace=0.5)
    time.sleep(0.2)
    caplog.set_level("WARNING")
    sc2 = sidecar_factory(state_dir=state, snapshot_max_age_seconds=0.05)
    st = sc2.service.status()
    assert (
        "snapshot discarded" in caplog.text and "older than snapshot_max_age_seconds" in caplog.text
    )
    assert st.detection.windows_evaluated == 0
    assert st.labelled.cumulative.n == traffic.joined > 0


# -- a store that cannot be written ------------------------------------------------------------
def test_an_unwritable_state_dir_falls_back_to_memory_loudly(
    sidecar_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    caplog.set_level("ERROR")
    sc = sidecar_factory(state_dir=blocker)
    assert "cannot open the durable store" in caplog.text and "in-memory" in caplog.text
    assert metric(sc.metrics_url, "silentwatch_store_durable") == 0
    assert metric(sc.metrics_url, "silentwatch_store_errors_total", '{op="open"}') == 1
    traffic = Traffic(sc.grpc_target, "mem")
    for _ in range(3):
        traffic.step()
    traffic.close()
    assert traffic.joined > 0


def test_a_full_store_is_counted_and_logged_and_serving_continues(
    sidecar_factory, caplog: pytest.LogCaptureFixture
) -> None:
    sc = sidecar_factory(store_max_bytes=1024 * 1024)
    caplog.set_level("ERROR")
    long_ids = "x" * 120
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        x = unit_rows(500)
        for b in range(60):  # ~60 x 500 ids of 130 bytes: far more than 1 MiB with indexes
            ids = [f"{b}-{i}-{long_ids}" for i in range(500)]
            res = stub.ClassifyBatch(
                pb.ClassifyBatchRequest(
                    embeddings=pb.EmbeddingMatrix(rows=500, dim=DIM, f32le=x.tobytes()),
                    request_ids=ids,
                ),
                timeout=10,
            )
            assert len(res.p_unsafe) == 500  # answered, full store or not
        st = sc.service.status()
    assert st.store.errors > 0 and st.store.predictions_not_recorded >= 500
    assert metric(sc.metrics_url, "silentwatch_store_errors_total", '{op="record"}') > 0
    assert ("database or disk is full" in caplog.text and "serving" not in caplog.text.lower()) or (
        "predictions are not being recorded" in caplog.text
    )
    assert st.store.durable  # still the durable store: recording resumes once space frees up


# -- hot reload -------------------------------------------------------------------------------
def _second_bundle(tmp_path: Path, world) -> Path:
    x, y = world.sample(800)
    out = tmp_path / "bundle-v2"
    train_bundle(
        x,
        y,
        out,
        embedder=EmbedderSpec(name="test/embedder", version="v1"),
        classifier_version="clf-test-2",
        reference_size=200,
        detectors=DetectorSettings(window_size=32, calibration_windows=100),
    )
    return out


def _broken_copy(bundle_dir: Path, to: Path) -> Path:
    shutil.copytree(bundle_dir, to)
    data = (to / "classifier.npz").read_bytes()
    (to / "classifier.npz").write_bytes(data[:-10] + b"0123456789")
    return to


def _admin(target: str):
    ch = grpc.insecure_channel(target)
    return ch, pb_grpc.AdminStub(ch)


def _auth(token: str = TOKEN) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def admin_sidecar(sidecar_factory, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    return sidecar_factory(admin_enabled=True, admin_token_file=token)


def test_admin_rpcs_are_off_by_default(sidecar) -> None:
    ch, admin = _admin(sidecar.grpc_target)
    with ch, pytest.raises(grpc.RpcError) as err:
        admin.ReloadBundle(pb.ReloadBundleRequest(), metadata=_auth(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_admin_rpcs_need_the_token(admin_sidecar) -> None:
    ch, admin = _admin(admin_sidecar.grpc_target)
    with ch:
        for md, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (_auth("wrong-token-wrong-token-0000"), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as err:
                admin.Snapshot(pb.SnapshotRequest(), metadata=md, timeout=10)
            assert err.value.code() == code
        res = admin.Snapshot(pb.SnapshotRequest(), metadata=_auth(), timeout=10)
        assert res.written and res.snapshots_written >= 1


def test_reload_refuses_a_broken_bundle_and_swaps_a_good_one_atomically(
    admin_sidecar, bundle_dir: Path, tmp_path: Path, world
) -> None:
    sc = admin_sidecar
    broken = _broken_copy(bundle_dir, tmp_path / "broken")
    good = _second_bundle(tmp_path, world)
    errors: list[grpc.RpcError] = []
    versions: set[str] = set()
    halt = threading.Event()

    def hammer() -> None:
        # Requests during the reloads: every one answered, by one bundle or the other.
        with grpc.insecure_channel(sc.grpc_target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            x = unit_rows(8, seed=5)
            while not halt.is_set():
                try:
                    r = stub.ClassifyBatch(
                        pb.ClassifyBatchRequest(
                            embeddings=pb.EmbeddingMatrix(rows=8, dim=DIM, f32le=x.tobytes())
                        ),
                        timeout=10,
                    )
                    versions.add(r.classifier_version)
                except grpc.RpcError as exc:
                    errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    ch, admin = _admin(sc.grpc_target)
    try:
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadBundle(
                pb.ReloadBundleRequest(bundle_path=str(broken)), metadata=_auth(), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "classifier.npz" in err.value.details() and "keeps serving" in err.value.details()
        assert sc.service.status().classifier_version == "clf-test"
        res = admin.ReloadBundle(
            pb.ReloadBundleRequest(bundle_path=str(good)), metadata=_auth(), timeout=60
        )
        assert res.reloaded and res.classifier_version == "clf-test-2"
        same = admin.ReloadBundle(
            pb.ReloadBundleRequest(bundle_path=str(good)), metadata=_auth(), timeout=60
        )
        assert not same.reloaded
        time.sleep(0.3)
    finally:
        halt.set()
        t.join(timeout=30)
        ch.close()
    assert errors == []
    assert versions <= {"clf-test", "clf-test-2"} and "clf-test-2" in versions
    st = sc.service.status()
    assert st.classifier_version == "clf-test-2" and st.bundle_sha256 == res.bundle_sha256
    url = sc.metrics_url
    assert metric(url, "silentwatch_bundle_reloads_total", '{result="refused"}') == 1
    assert metric(url, "silentwatch_bundle_reloads_total", '{result="ok"}') == 1
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'classifier_version="clf-test-2"' in text


def test_sighup_reloads_and_a_broken_bundle_keeps_the_old_one(
    bundle_dir: Path, tmp_path: Path, world
) -> None:
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    proc = serve("--bundle", str(live), "--state-dir", str(tmp_path / "st"))
    try:
        target = wait_serving(proc)["grpc"]
        # Break the bundle in place, then ask for a reload: refused, old one serves on.
        data = (live / "classifier.npz").read_bytes()
        (live / "classifier.npz").write_bytes(data[:-10] + b"0123456789")
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.0)
        assert status(target).classifier_version == "clf-test"
        shutil.rmtree(live)
        shutil.copytree(_second_bundle(tmp_path, world), live)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while status(target).classifier_version != "clf-test-2":
            assert time.monotonic() < deadline, "SIGHUP did not reload the bundle"
            time.sleep(0.1)
    finally:
        err = stop(proc)
    assert "bundle reload refused" in err and "classifier.npz" in err
    assert "bundle reloaded" in err


# -- the stateless multi-replica path ------------------------------------------------------------
def test_a_label_that_reaches_another_replica_still_counts(sidecar_factory, tmp_path) -> None:
    a = sidecar_factory(state_dir=tmp_path / "replica-a")
    b = sidecar_factory(state_dir=tmp_path / "replica-b")
    x = unit_rows(4, seed=9)
    with grpc.insecure_channel(a.grpc_target) as ca, grpc.insecure_channel(b.grpc_target) as cb:
        sa, sb = pb_grpc.MonitorStub(ca), pb_grpc.MonitorStub(cb)
        served = sa.ClassifyBatch(
            pb.ClassifyBatchRequest(
                embeddings=pb.EmbeddingMatrix(rows=4, dim=DIM, f32le=x.tobytes()),
                request_ids=["q0", "q1", "q2", "q3"],
                embedder_version="v1",
            ),
            timeout=10,
        )
        p = list(served.p_unsafe)
        labels = [
            pb.Label(
                request_id="q0",
                unsafe=True,
                p_unsafe=p[0],
                embedder_version="v1",
                classifier_version="clf-test",
            ),
            pb.Label(request_id="q1", unsafe=False, p_unsafe=p[1]),
            pb.Label(request_id="q2", unsafe=True, p_unsafe=p[2], embedder_version="v9"),
            pb.Label(request_id="q3", unsafe=False),  # nothing carried: unknown on b
        ]
        res = sb.SubmitLabels(pb.SubmitLabelsRequest(labels=labels), timeout=10)
        assert (res.joined, res.joined_carried, res.carried_refused, res.unknown) == (2, 2, 1, 2)
        again = sb.SubmitLabels(pb.SubmitLabelsRequest(labels=labels[:1]), timeout=10)
        assert again.already_labelled == 1 and again.joined == 0
        with pytest.raises(grpc.RpcError) as err:
            sb.SubmitLabels(
                pb.SubmitLabelsRequest(labels=[pb.Label(request_id="z", p_unsafe=1.5)]),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "p_unsafe" in err.value.details()
    assert b.pipeline.wait_idle()
    st = b.service.status()
    assert st.labelled.cumulative.n == 2
    assert st.labels.joined_carried == 2 and st.labels.carried_refused == 1
    assert np.isclose(st.labelled.cumulative.positives, 1)


def test_a_store_that_breaks_at_run_time_keeps_the_sidecar_serving(sidecar_factory) -> None:
    """Every store call failing (here: its connection gone, as after an I/O error): Classify
    answers, SubmitLabels refuses with UNAVAILABLE (nothing half-accepted), GetStatus and
    /metrics still answer, and every failure is counted."""
    sc = sidecar_factory()
    traffic = Traffic(sc.grpc_target, "broken")
    traffic.step()
    sc.store._db.close()
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        x = unit_rows(4)
        res = stub.ClassifyBatch(
            pb.ClassifyBatchRequest(
                embeddings=pb.EmbeddingMatrix(rows=4, dim=DIM, f32le=x.tobytes()),
                request_ids=["b1", "b2", "b3", "b4"],
            ),
            timeout=10,
        )
        assert len(res.p_unsafe) == 4
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitLabels(
                # recorded before the break: its join must be written, and cannot be
                pb.SubmitLabelsRequest(labels=[pb.Label(request_id="broken-0-0", unsafe=True)]),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing in this request was accepted" in err.value.details()
        st = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert st.store.predictions_not_recorded == 4 and st.store.errors >= 2
    assert st.store.entries == 32  # the failed record and the failed join changed nothing
    assert metric(sc.metrics_url, "silentwatch_store_errors_total", '{op="join"}') == 1
    assert metric(sc.metrics_url, "silentwatch_predictions_not_recorded_total") == 4
    traffic.close()
