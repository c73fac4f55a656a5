"""What the load generator sends: a synthetic world's embeddings, unique ids, delayed labels.

Ids are ``<run>-<k>`` with k from one counter, so a batch's ids are the range k0..k0+n-1
and the client can remember what to label as (time, k0, n): a few bytes per request, not
per row. Row k's embedding and label are pool row ``k % POOL_ROWS``. With ``packed``,
ClassifyBatch sends ``packed_request_ids`` (k in the low 8 bytes, the run's token in the
high 8) and their labels go in columnar SubmitLabels requests; single Classify calls keep
string ids (the unary RPC has no packed form).
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import numpy as np
from harness import channel

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

DEFAULT_DIM = 384  # the serving figure is d=384 (all-MiniLM-L6-v2's dimension)
WORLD_SEED = 11
TRAIN_ROWS = 6000  # enough held-out rows to calibrate the default window of 256
POOL_ROWS = 8192  # distinct embeddings the traffic cycles through


def build_bundle(out: Path, dim: int = DEFAULT_DIM, rows: int = TRAIN_ROWS) -> Path:
    """A bundle on the demo's synthetic embedding world, detectors calibrated (~10-20 s)."""
    from silentwatch.monitor.bundle import EmbedderSpec
    from silentwatch.monitor.simulate.world import SyntheticWorld
    from silentwatch.monitor.training import train_bundle

    x, y = SyntheticWorld(dim=dim, seed=WORLD_SEED).sample(rows)
    train_bundle(x, y, out, embedder=EmbedderSpec(name="loadgen/world", version="v1"))
    return out


class Traffic:
    """Request builders over a fixed pool of embeddings; every request id is unique."""

    def __init__(self, dim: int, embedder_version: str, seed: int = 0) -> None:
        from silentwatch.monitor.simulate.world import SyntheticWorld

        # Rows after the ones a bundle built here was trained on: clean, unseen traffic.
        x, y = SyntheticWorld(dim=dim, seed=WORLD_SEED).sample(TRAIN_ROWS + POOL_ROWS)
        x, y = x[TRAIN_ROWS:], y[TRAIN_ROWS:]
        self.dim = dim
        self.row_bytes = dim * 4
        # Twice over, so that any run of up to POOL_ROWS rows is one contiguous slice.
        self.pool = np.concatenate([x, x]).astype("<f4").tobytes()
        self.labels = y.astype(bool)
        self.embedder_version = embedder_version
        token = secrets.token_hex(3)
        self.run = f"lg{token}{seed:x}"
        self.packed = False  # ClassifyBatch ids as packed_request_ids (LoadConfig.packed_ids)
        self._high = np.uint64((int(token, 16) << 32) | (seed & 0xFFFFFFFF))
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def for_sidecar(cls, target: str, seed: int = 0) -> Traffic:
        """Traffic of the dimension and embedder version the sidecar at ``target`` serves."""
        with channel(target) as ch:
            st = pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=30)
        return cls(st.embedding_dim, st.embedder.version, seed)

    def take(self, n: int) -> int:
        """Reserve n consecutive ids; returns the first k."""
        with self._lock:
            k0 = self._next
            self._next += n
        return k0

    def ids(self, k0: int, n: int) -> list[str]:
        run = self.run
        return [f"{run}-{k}" for k in range(k0, k0 + n)]

    def packed_ids(self, ks: np.ndarray) -> bytes:
        """Ids ``ks`` as packed 16-byte ids: k in the low 8 bytes, the run in the high 8."""
        out = np.empty((len(ks), 2), dtype="<u8")
        out[:, 0] = ks
        out[:, 1] = self._high
        return out.tobytes()

    def rows(self, k0: int, n: int) -> bytes:
        off = (k0 % POOL_ROWS) * self.row_bytes
        return self.pool[off : off + n * self.row_bytes]

    def classify(self, k0: int) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(
            request_id=f"{self.run}-{k0}",
            embedding=pb.Embedding(f32le=self.rows(k0, 1)),
            embedder_version=self.embedder_version,
        )

    def classify_batch(self, k0: int, n: int) -> pb.ClassifyBatchRequest:
        matrix = pb.EmbeddingMatrix(rows=n, dim=self.dim, f32le=self.rows(k0, n))
        if self.packed:
            ks = np.arange(k0, k0 + n, dtype=np.uint64)
            return pb.ClassifyBatchRequest(
                packed_request_ids=self.packed_ids(ks),
                embeddings=matrix,
                embedder_version=self.embedder_version,
            )
        return pb.ClassifyBatchRequest(
            request_ids=self.ids(k0, n), embeddings=matrix, embedder_version=self.embedder_version
        )

    @staticmethod
    def labelled(k0: int, n: int, fraction: float) -> np.ndarray:
        """Which of ids k0..k0+n-1 get a label: a fixed hash of k, so any subset is fair.

        >>> Traffic.labelled(0, 10, 0.5).tolist()
        [0, 2, 4, 5, 7]
        """
        ks = np.arange(k0, k0 + n, dtype=np.uint64)
        h = (ks * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
        return ks[h < np.uint64(int(fraction * 2**32))]

    def label_request(self, ks: np.ndarray, packed: bool = False) -> pb.SubmitLabelsRequest:
        """Labels for ids ``ks``: Label messages, or (``packed``) the columnar form."""
        run, y = self.run, self.labels
        if packed:
            unsafe = y[(ks % np.uint64(POOL_ROWS)).astype(np.intp)].astype(np.uint8)
            return pb.SubmitLabelsRequest(
                packed_request_ids=self.packed_ids(ks), packed_unsafe=unsafe.tobytes()
            )
        return pb.SubmitLabelsRequest(
            labels=[
                pb.Label(request_id=f"{run}-{k}", unsafe=bool(y[k % POOL_ROWS]))
                for k in ks.tolist()
            ]
        )
