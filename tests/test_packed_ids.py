"""Columnar ids (issue 16): ``packed_request_ids`` on ClassifyBatch and Observe, columnar
labels on SubmitLabels, over real gRPC; refusals name the field and record nothing; the
durable store journals packed ids as one blob and replays them after a restart."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import DuplicateRequestIds
from silentwatch.v1 import monitor_pb2 as pb

from .conftest import unit_rows
from .test_bad_input import refused, still_serves
from .test_multihead_serving import _matrix, _rows, multi_bundle, served  # noqa: F401

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def packed(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(16 * n)


def batch(x: np.ndarray, ids: bytes = b"", **kw) -> pb.ClassifyBatchRequest:
    matrix = pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.astype("<f4").tobytes())
    return pb.ClassifyBatchRequest(packed_request_ids=ids, embeddings=matrix, **kw)


def labels(ids: bytes, unsafe: list[int], head: str = "") -> pb.SubmitLabelsRequest:
    return pb.SubmitLabelsRequest(
        packed_request_ids=ids, packed_unsafe=bytes(unsafe), packed_head=head
    )


def test_packed_ids_record_and_join(sidecar, stub) -> None:
    ids = packed(5, seed=1)
    stub.ClassifyBatch(batch(unit_rows(5), ids))
    assert len(sidecar.store) == 5
    r = stub.SubmitLabels(labels(ids[:48], [1, 0, 1]))
    assert (r.received, r.joined, r.unknown) == (3, 3, 0)
    # A second label for the same ids, and an id never seen: counted, with hex ids shown.
    stranger = packed(1, seed=2)
    r = stub.SubmitLabels(labels(ids[:16] + stranger, [1, 1]))
    assert (r.joined, r.already_labelled, r.unknown) == (0, 1, 1)
    assert list(r.unmatched_request_ids) == [ids[:16].hex(), stranger.hex()]
    # The two id forms never match: the hex string of a packed id is another id.
    r = stub.SubmitLabels(pb.SubmitLabelsRequest(labels=[pb.Label(request_id=ids[64:].hex())]))
    assert (r.joined, r.unknown) == (0, 1)
    assert len(sidecar.store) == 2
    obs = packed(4, seed=3)
    stub.Observe(
        pb.ObserveRequest(
            packed_request_ids=obs,
            embeddings=batch(unit_rows(4, seed=5)).embeddings,
            p_unsafe=[0.1, 0.2, 0.3, 0.9],
        )
    )
    r = stub.SubmitLabels(labels(obs, [0, 0, 0, 1]))
    assert r.joined == 4
    sidecar.pipeline.wait_idle()


@pytest.mark.parametrize(
    ("ids", "rows", "needle"),
    [
        (b"x" * 17, 1, "17 bytes, not a multiple of 16"),
        (b"x" * 32, 3, "holds 2 ids for 3 rows"),
        (b"x" * 64, 3, "holds 4 ids for 3 rows"),
    ],
)
def test_bad_packed_ids_are_refused_and_record_nothing(sidecar, stub, ids, rows, needle) -> None:
    err = refused(stub.ClassifyBatch, batch(unit_rows(rows), ids))
    assert err.code() == INVALID, err.details()
    assert "packed_request_ids" in err.details() and needle in err.details()
    assert len(sidecar.store) == 0
    still_serves(stub)


def test_both_id_forms_are_refused(sidecar, stub) -> None:
    x = unit_rows(2)
    err = refused(stub.ClassifyBatch, batch(x, packed(2, 9), request_ids=["a", "b"]))
    assert err.code() == INVALID and "not both" in err.details()
    observe = pb.ObserveRequest(
        request_ids=["a", "b"], packed_request_ids=packed(2, 9), embeddings=batch(x).embeddings
    )
    err = refused(stub.Observe, observe)
    assert err.code() == INVALID and "not both" in err.details()
    assert len(sidecar.store) == 0


def test_duplicate_packed_ids_are_already_exists(sidecar, stub) -> None:
    ids = packed(3, seed=4)
    stub.ClassifyBatch(batch(unit_rows(3), ids))
    again = ids[16:32] + packed(2, seed=5)
    err = refused(stub.ClassifyBatch, batch(unit_rows(3), again))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert ids[16:32].hex() in err.details()
    twice = packed(1, seed=6) * 2
    err = refused(stub.ClassifyBatch, batch(unit_rows(2), twice))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "twice" in err.details()
    assert len(sidecar.store) == 3  # nothing of the refused requests was recorded
    still_serves(stub)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (labels(b"y" * 32, [1]), "holds 2 ids for 1 labels"),
        (labels(b"y" * 20, [1]), "not a multiple of 16"),
        (labels(b"y" * 16, [2]), "packed_unsafe[0] is 2"),
        (labels(b"y" * 16, []), "packed_unsafe is empty"),
        (labels(b"y" * 16, [1], head="nope"), "packed_head is 'nope'"),
        (
            pb.SubmitLabelsRequest(
                labels=[pb.Label(request_id="a")], packed_request_ids=b"y" * 16, packed_unsafe=b"\1"
            ),
            "not both",
        ),
    ],
)
def test_bad_columnar_labels_are_refused(stub, request_, needle) -> None:
    err = refused(stub.SubmitLabels, request_)
    assert err.code() == INVALID and needle in err.details(), err.details()
    still_serves(stub)


def scores_le(*p: float) -> bytes:
    return np.asarray(p, dtype="<f4").tobytes()


def test_columnar_labels_carry_scores(sidecar, stub) -> None:
    # Another replica served these ids: the labels carry the scores it returned.
    ids = packed(3, seed=11)
    r = stub.SubmitLabels(
        pb.SubmitLabelsRequest(
            packed_request_ids=ids,
            packed_unsafe=bytes([1, 0, 1]),
            packed_p_unsafe=scores_le(0.9, 0.2, np.nan),  # the third carries none
            packed_embedder_version="v1",
            packed_classifier_version="clf-test",
        )
    )
    assert (r.received, r.joined, r.joined_carried, r.unknown, r.carried_refused) == (3, 2, 2, 1, 0)
    # Labelled once: a second carried label for them is already labelled.
    again = pb.SubmitLabelsRequest(
        packed_request_ids=ids[:16], packed_unsafe=b"\1", packed_p_unsafe=scores_le(0.9)
    )
    r = stub.SubmitLabels(again)
    assert (r.joined, r.already_labelled) == (0, 1)
    # A local prediction wins over the carried score.
    mine = packed(1, seed=12)
    stub.ClassifyBatch(batch(unit_rows(1), mine))
    r = stub.SubmitLabels(
        pb.SubmitLabelsRequest(
            packed_request_ids=mine, packed_unsafe=b"\0", packed_p_unsafe=scores_le(0.5)
        )
    )
    assert (r.joined, r.joined_carried) == (1, 0)
    # Scores from another classifier (or an embedder the bundle does not accept): refused,
    # counted, and the labels then find nothing.
    for kw in ({"packed_classifier_version": "clf-other"}, {"packed_embedder_version": "v9"}):
        other = packed(2, seed=13 + len(kw))
        r = stub.SubmitLabels(
            pb.SubmitLabelsRequest(
                packed_request_ids=other,
                packed_unsafe=b"\1\1",
                packed_p_unsafe=scores_le(0.7, 0.8),
                **kw,
            )
        )
        assert (r.joined, r.carried_refused, r.unknown) == (0, 2, 2)
    st = stub.GetStatus(pb.GetStatusRequest())
    assert st.labels.joined_carried == 2 and st.labels.carried_refused == 4
    sidecar.pipeline.wait_idle()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"packed_p_unsafe": scores_le(0.5)}, "packed_p_unsafe has 4 bytes for 2 labels"),
        ({"packed_p_unsafe": b"\0" * 9}, "9 bytes for 2 labels"),
        ({"packed_p_unsafe": scores_le(0.5, 1.5)}, "packed_p_unsafe[1] is 1.5"),
        ({"packed_p_unsafe": scores_le(np.inf, 0.5)}, "packed_p_unsafe[0] is inf"),
        ({"packed_embedder_version": "v1"}, "without packed_p_unsafe"),
    ],
)
def test_bad_columnar_scores_are_refused_and_join_nothing(sidecar, stub, fields, needle) -> None:
    ids = packed(2, seed=20)
    stub.ClassifyBatch(batch(unit_rows(2), ids))
    request_ = pb.SubmitLabelsRequest(packed_request_ids=ids, packed_unsafe=b"\1\0", **fields)
    err = refused(stub.SubmitLabels, request_)
    assert err.code() == INVALID and needle in err.details(), err.details()
    assert len(sidecar.store) == 2  # nothing joined
    still_serves(stub)
    # Scores with Label messages in the same request: "not both".
    mixed = pb.SubmitLabelsRequest(labels=[pb.Label(request_id="a")], **fields)
    err = refused(stub.SubmitLabels, mixed)
    assert err.code() == INVALID and "not both" in err.details()


def test_columnar_labels_name_one_head(served) -> None:  # noqa: F811
    sc, stub = served
    ids = packed(3, seed=7)
    stub.ClassifyBatch(
        pb.ClassifyBatchRequest(
            packed_request_ids=ids, embeddings=_matrix(_rows(3, seed=8)), embedder_version="v1"
        )
    )
    r = stub.SubmitLabels(labels(ids, [1, 0, 1], head="threat"))
    assert r.joined == 3
    r = stub.SubmitLabels(labels(ids[:16], [1], head="threat"))
    assert (r.joined, r.already_labelled) == (0, 1)
    r = stub.SubmitLabels(labels(ids, [0, 0, 0]))  # the default head: joins
    assert r.joined == 3
    sc.pipeline.wait_idle()


def test_the_journal_keeps_packed_ids_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    ids = np.frombuffer(os.urandom(16 * 6), "V16").tolist()
    s = SqliteStore(path, 100, 3600, bundle_sha256="b")
    s.record(ids[:3], np.array([0.1, 0.2, 0.3], dtype=np.float32))
    s.record(["text-id"], np.array([0.4], dtype=np.float32))
    s.record(ids[3:], np.array([0.5, 0.6, 0.7], dtype=np.float32))
    assert s.join(ids[:1], np.array([1])).joined == 1
    s.close()
    s = SqliteStore(path, 100, 3600, bundle_sha256="b")
    assert len(s) == 6
    with pytest.raises(DuplicateRequestIds):
        s.record(ids[4:5], np.array([0.9], dtype=np.float32))
    r = s.join([*ids[:2], "text-id"], np.array([1, 1, 0]))
    assert (r.joined, r.already_labelled) == (2, 1)
    assert r.scores.tolist() == pytest.approx([0.2, 0.4])
    s.close()


def test_packed_and_string_ids_are_distinct_keys() -> None:
    s = MemoryStore(capacity=4, ttl_seconds=60)
    raw = b"0123456789abcdef"
    s.record([raw, raw.decode()], np.array([0.25, 0.75], dtype=np.float32))
    r = s.join([raw.decode()], np.array([1]))
    assert r.scores.tolist() == [0.75] and len(s) == 1
