"""PromQL helpers shared by the rule and dashboard tests: a small tokenizer that tells
metric names from functions, keywords and labels, and the metric names a live sidecar
really exports (with and without paired canaries)."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from silentwatch.client import CanaryClient
from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM, unit_rows

PROMETHEUS_BUILTINS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

# --------------------------------------------------------------------------------------------
# A small PromQL tokenizer: enough to tell metric names from functions, keywords and labels.

# Binary operators, modifiers, literals and aggregation operators: keywords of PromQL's lexer,
# never metric names (the lexer is case-insensitive about them).
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Keywords followed by a parenthesised list of label names (optional for group_left/right).
LABEL_LIST_CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Numbers and durations: 0.99, 1e-9, 0x1f, 5m, 1h30m.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?[A-Za-z0-9_]*")


def _skip_string(expr: str, i: int) -> int:
    """Index just after the string literal that starts at ``expr[i]``."""
    quote = expr[i]
    i += 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    return len(expr)  # unterminated: promtool reports it


def _skip_group(expr: str, i: int) -> int:
    """Index just after the bracket that closes the one at ``expr[i]`` (strings skipped)."""
    close = {"(": ")", "{": "}", "[": "]"}[expr[i]]
    depth, opening = 0, expr[i]
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c == opening:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(expr)  # unbalanced: promtool reports it


def _next_char(expr: str, i: int) -> tuple[int, str]:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i, expr[i] if i < len(expr) else ""


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric name, text between its braces)`` for each vector selector in ``expr``.

    String literals, ``[...]`` ranges and subqueries, and the label lists of ``by``,
    ``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` are skipped; an
    identifier followed by ``(`` is a function; keywords are not names.

    >>> metric_selectors('rate(a_total{job=~"$job"}[5m]) / on (job) b')
    [('a_total', 'job=~"$job"'), ('b', '')]
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "#":  # a comment runs to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "{[":  # a selector without a name, a range or a subquery
            i = _skip_group(expr, i)
        elif (c.isdigit() or c == ".") and (num := _NUMBER.match(expr, i)):
            i = num.end()
        elif m := _IDENT.match(expr, i):
            word, i = m.group(), m.end()
            j, nxt = _next_char(expr, i)
            if word.lower() in LABEL_LIST_CLAUSES:
                if nxt == "(":
                    i = _skip_group(expr, j)
            elif word.lower() in KEYWORDS or nxt == "(":
                pass  # keyword or function call
            elif nxt == "{":
                i = _skip_group(expr, j)
                out.append((word, expr[j + 1 : i - 1]))
            else:
                out.append((word, ""))
        else:
            i += 1
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in metric_selectors(expr)}


def _matrix(x: np.ndarray) -> pb.EmbeddingMatrix:
    return pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.astype("<f4").tobytes())


def live_metric_names(sidecar: Sidecar) -> set[str]:
    """Sample names a sidecar exports after classify, observe and label traffic."""
    with grpc.insecure_channel(sidecar.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        for b in range(4):  # 400 rows: several detector windows of 32
            ids = [f"d{b}-{i}" for i in range(100)]
            stub.ClassifyBatch(
                pb.ClassifyBatchRequest(
                    request_ids=ids,
                    embeddings=_matrix(unit_rows(100, seed=b)),
                    embedder_version="v1",
                )
            )
        stub.Observe(
            pb.ObserveRequest(embeddings=_matrix(unit_rows(2, seed=9)), p_unsafe=[0.1, 0.9])
        )
        labels = [pb.Label(request_id=f"d0-{i}", unsafe=bool(i % 2)) for i in range(80)]
        labels.append(pb.Label(request_id="never-seen", unsafe=True))
        stub.SubmitLabels(pb.SubmitLabelsRequest(labels=labels))
        with pytest.raises(grpc.RpcError):  # a non-OK code, too
            stub.ClassifyBatch(pb.ClassifyBatchRequest(embeddings=_matrix(unit_rows(1, DIM + 1))))
    assert sidecar.pipeline.wait_idle(10)
    return {name for name, _ in scrape(sidecar.metrics_url, timeout=10)}


@functools.cache
def paired_canary_metric_names() -> frozenset[str]:
    """Sample names a sidecar exports once its bundle carries canaries and one submission
    came in: the ``silentwatch_paired_canary_*`` families exist only then.

    The session's ``sidecar`` fixture serves a bundle trained from embeddings alone (no
    canaries), so the rule and dashboard checks add these names. Cached: one bundle and one
    sidecar for the whole session.
    """
    x, y = SyntheticWorld(dim=DIM, delta=0.02, seed=5).sample(800)
    texts = [f"canary text {i}" for i in range(len(x))]
    row = {t: i for i, t in enumerate(texts)}
    with tempfile.TemporaryDirectory(prefix="silentwatch-canaries-") as tmp:
        out = Path(tmp) / "b"
        train_bundle(
            x,
            y,
            out,
            embedder=EmbedderSpec(name="test/embedder", version="v1"),
            reference_size=200,
            detectors=DetectorSettings(window_size=32, calibration_windows=200),
            texts=texts,
            canary_count=64,
        )
        settings = load_settings(bundle=out, port=0, metrics_port=0, store="memory")
        sc = Sidecar(settings, bundle=load_bundle(out)).start()
        try:
            client = CanaryClient(sc.grpc_target, embedder_version="v1")
            try:
                client.check(lambda ts: x[[row[t] for t in ts]])
            finally:
                client.stop()
            names = {name for name, _ in scrape(sc.metrics_url, timeout=10)}
        finally:
            sc.stop(grace=0.5)
    assert "silentwatch_paired_canary_last_submission_timestamp_seconds" in names
    return frozenset(names)


def recording_rule_names(rules_dir: Path) -> set[str]:
    files = sorted([*rules_dir.glob("*.yml"), *rules_dir.glob("*.yaml")])
    assert files, f"no rule files in {rules_dir}: the dashboard's recording rules live there"
    names = set()
    for f in files:
        for group in yaml.safe_load(f.read_text(encoding="utf-8"))["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names
