"""Fuzzed bundles are refused at load with a :class:`BundleError` that names the problem.

Two kinds of evidence:

* hypothesis corrupts a copy of the session's valid bundle (random bytes at random offsets
  of each file, with and without re-hashing the payload so that the parser, not only the
  sha256 check, meets the damage; and structural edits of ``manifest.json``): ``load_bundle``
  raises ``BundleError`` or returns a bundle the sidecar can be built from, never anything
  else;
* explicit cases, one per problem, assert that the message names the file and the array or
  key at fault; the same cases sent to a running sidecar's ``Admin.ReloadBundle`` are
  FAILED_PRECONDITION with that message while the original bundle keeps serving.

``SILENTWATCH_FUZZ_EXAMPLES`` raises the example counts; ``derandomize=True`` keeps CI
reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from silentwatch.monitor.bundle import BundleError, LoadedBundle, load_bundle
from silentwatch.monitor.config import ServeSettings, load_settings
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM, unit_rows
from .fuzzing import examples

MANIFEST = "manifest.json"
CLASSIFIER = "classifier.npz"
REFERENCE = "reference.npz"
FILES = (MANIFEST, CLASSIFIER, REFERENCE)


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def copy_of(src: Path) -> Iterator[Path]:
    """A private copy of a bundle, removed afterwards (one per hypothesis example)."""
    with tempfile.TemporaryDirectory(prefix="sw-fuzz-") as tmp:
        dst = Path(tmp) / "b"
        shutil.copytree(src, dst)
        yield dst


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST).read_text())


def write_manifest(bundle: Path, raw: Any) -> None:
    (bundle / MANIFEST).write_text(json.dumps(raw, indent=2))


def rehash(bundle: Path, name: str) -> None:
    """Make the manifest pin ``name``'s current bytes (a consistent forgery)."""
    raw = read_manifest(bundle)
    raw["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    write_manifest(bundle, raw)


def arrays_of(bundle: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(bundle / name) as z:
        return {k: z[k] for k in z.files}


def npz_bytes(arrays: dict[str, Any], *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=allow_pickle, **arrays)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def put_payload(bundle: Path, name: str, data: bytes) -> None:
    (bundle / name).write_bytes(data)
    rehash(bundle, name)


def edit_arrays(name: str, **changes: Any) -> Callable[[Path], None]:
    """Mutation: set (or, with ``None``, drop) arrays of ``name`` and re-hash it."""

    def mutate(bundle: Path) -> None:
        arrays = arrays_of(bundle, name)
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value(arrays[key]) if callable(value) else value
        put_payload(bundle, name, npz_bytes(arrays))

    return mutate


def edit_manifest(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        raw = read_manifest(bundle)
        edit(raw)
        write_manifest(bundle, raw)

    return mutate


def raw_manifest(text: str | bytes) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        path = bundle / MANIFEST
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return mutate


def with_nan(arr: np.ndarray, value: float = np.nan) -> np.ndarray:
    out = np.array(arr, dtype=np.float64 if arr.dtype.kind != "f" else arr.dtype, copy=True)
    out.reshape(-1)[0] = value
    return out


def usable(bundle: LoadedBundle) -> None:
    """What a bundle that loads must give: a sidecar can be built on it and it scores."""
    # An in-memory store (where this version has the choice) inside the bundle's temp dir.
    state = {"store": "memory", "state_dir": bundle.path.parent / "state"}
    settings_ = load_settings(
        bundle=bundle.path,
        port=0,
        metrics_port=0,
        **{k: v for k, v in state.items() if k in ServeSettings.model_fields},
    )
    sidecar = Sidecar(settings_, bundle=bundle)  # builds the detection engine; not started
    p = sidecar.bundle.scorer.predict_proba(unit_rows(4))
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


def load_outcome(bundle: Path) -> BundleError | None:
    """``None`` when the bundle loads (and is usable), else the BundleError; nothing else."""
    try:
        loaded = load_bundle(bundle)
    except BundleError as exc:
        assert len(str(exc)) > 30, f"vague refusal: {exc}"
        return exc
    usable(loaded)
    return None


# -- hypothesis: random damage -------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, a slice cut out, junk inserted, truncated or replaced."""
    op = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "replace", "overwrite"]))
    n = len(data)
    if op == "replace":
        return draw(st.binary(max_size=512))
    at = draw(st.integers(0, max(n - 1, 0)))
    if op == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            buf[i] ^= draw(st.integers(1, 255))
        return bytes(buf)
    if op == "cut":
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    if op == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if op == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + junk + data[at + len(junk) :]
    return data[:at]


@pytest.mark.parametrize(
    ("name", "pinned"),
    [
        pytest.param(MANIFEST, False, id="manifest"),
        pytest.param(CLASSIFIER, True, id="classifier-rehashed"),
        pytest.param(CLASSIFIER, False, id="classifier-hash-stale"),
        pytest.param(REFERENCE, True, id="reference-rehashed"),
        pytest.param(REFERENCE, False, id="reference-hash-stale"),
    ],
)
def test_random_damage_is_always_a_bundle_error(bundle_dir: Path, name: str, pinned: bool) -> None:
    """Random byte damage anywhere in any file: BundleError or a usable bundle, nothing else.

    ``rehashed`` fixes the payload's sha256 in the manifest first, so the npz parser (not
    only the hash check) meets the damage; for the manifest it makes no difference."""
    original = (bundle_dir / name).read_bytes()

    @examples(60, HealthCheck.too_slow)
    @given(data=damaged(original))
    def run(data: bytes) -> None:
        with copy_of(bundle_dir) as b:
            (b / name).write_bytes(data)
            if pinned and name != MANIFEST:
                rehash(b, name)
            err = load_outcome(b)
            if err is not None and data != original:
                assert name in str(err), str(err)  # the damaged file is named
            if not pinned and name != MANIFEST and data != original:
                assert err is not None and "sha256" in str(err), "a stale hash was accepted"

    run()


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "0" * 64, "f" * 64, "2024-01-01T00:00:00Z", "x" * 200]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in parsed JSON (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*prefix, i))
    return out


def test_structural_manifest_edits_are_refused_by_name(bundle_dir: Path) -> None:
    """Delete, retype or add any key of manifest.json: BundleError naming a key on that path
    (or the payload it pins), or a bundle a sidecar can be built on."""
    pristine = read_manifest(bundle_dir)
    all_paths = paths(pristine)

    @examples(120, HealthCheck.too_slow)
    @given(
        path=st.sampled_from(all_paths),
        op=st.sampled_from(["delete", "replace", "add"]),
        value=json_values,
        new_key=st.text(min_size=1, max_size=10),
    )
    def run(path: tuple[Any, ...], op: str, value: Any, new_key: str) -> None:
        raw = json.loads(json.dumps(pristine))
        parent = raw
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if op == "delete":
            if isinstance(parent, list):
                parent.pop(last)
            else:
                del parent[last]
        elif op == "replace":
            parent[last] = value
        elif isinstance(parent[last], dict):
            if new_key in parent[last]:
                return
            parent[last][new_key] = value
        else:
            return
        with copy_of(bundle_dir) as b:
            write_manifest(b, raw)
            err = load_outcome(b)
        if err is None:
            return
        message = str(err)
        named = [str(p) for p in path if isinstance(p, str)]
        if op == "add":
            named.append(new_key)
        assert any(n in message for n in named) or "schema_version" in message, (
            f"{op} {path}: {message}"
        )

    run()


# -- explicit cases: the message names the problem -----------------------------------------


def _object_coef(bundle: Path) -> None:
    arrays = arrays_of(bundle, CLASSIFIER)
    arrays["coef"] = np.array([{"i": i} for i in range(DIM)], dtype=object)
    put_payload(bundle, CLASSIFIER, npz_bytes(arrays, allow_pickle=True))


def _member(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], None]:
    """Mutation: classifier.npz with member ``name`` replaced by raw ``data``."""

    def mutate(bundle: Path) -> None:
        arrays = arrays_of(bundle, CLASSIFIER)
        members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items() if k != "coef"}
        members[name] = data(bundle) if callable(data) else data
        put_payload(bundle, CLASSIFIER, zip_bytes(members))

    return mutate


def _huge_header(bundle: Path) -> bytes:
    header = npy_bytes(np.zeros(DIM))
    return header.replace(f"({DIM},)".encode(), b"(99999999999,)", 1)


def _npy_version_3(bundle: Path) -> bytes:
    data = bytearray(npy_bytes(np.zeros(DIM)))
    data[6] = 3  # the major version byte after the magic
    return bytes(data)


def _copy_file(src: str, dst: str) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        shutil.copy(bundle / src, bundle / dst)

    return mutate


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        (bundle / name).unlink()
        (bundle / name).mkdir()

    return mutate


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / name).unlink()


def _flip(name: str) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (bundle / name).write_bytes(bytes(data))

    return mutate


def _pop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        obj = raw
        for k in keys[:-1]:
            obj = obj[k]
        obj.pop(keys[-1])

    return edit


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        obj = raw
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return edit


def _short_profile(bundle: Path) -> None:
    arrays = arrays_of(bundle, REFERENCE)
    arrays["det_confidence_shift_profile"] = np.array([0.7, 0.4])
    put_payload(bundle, REFERENCE, npz_bytes(arrays))


CASES = [
    # -- manifest.json: syntax and shape
    pytest.param(
        raw_manifest('{"schema_version": 1,'),
        r"manifest\.json is not valid JSON",
        id="manifest-not-json",
    ),
    pytest.param(
        raw_manifest(b'{"a": "\xff\xfe"}'), r"manifest\.json .*not UTF-8", id="manifest-not-utf8"
    ),
    pytest.param(
        raw_manifest("[1, 2, 3]"), r"manifest\.json is invalid: \(root\)", id="manifest-list"
    ),
    pytest.param(
        raw_manifest('"bundle"'), r"manifest\.json is invalid: \(root\)", id="manifest-string"
    ),
    pytest.param(raw_manifest("null"), r"manifest\.json is invalid: \(root\)", id="manifest-null"),
    pytest.param(
        raw_manifest("[" * 100_000 + "]" * 100_000), r"manifest\.json is", id="manifest-deep"
    ),
    pytest.param(
        raw_manifest('{"embedding_dim": ' + "9" * 5000 + "}"),
        r"manifest\.json is not valid JSON",
        id="manifest-huge-int",
    ),
    pytest.param(
        _replace_with_dir(MANIFEST), r"manifest\.json .*cannot be read", id="manifest-dir"
    ),
    pytest.param(_unlink(MANIFEST), r"no manifest\.json", id="manifest-missing"),
    # -- manifest.json: keys
    pytest.param(
        edit_manifest(_pop("classifier_version")),
        r"classifier_version: Field required",
        id="missing-classifier-version",
    ),
    pytest.param(
        edit_manifest(_pop("created_at")), r"created_at: Field required", id="missing-created-at"
    ),
    pytest.param(
        edit_manifest(_pop("embedding_dim")),
        r"embedding_dim: Field required",
        id="missing-embedding-dim",
    ),
    pytest.param(
        edit_manifest(_pop("embedder")), r"embedder: Field required", id="missing-embedder"
    ),
    pytest.param(
        edit_manifest(_pop("embedder", "version")),
        r"embedder\.version: Field required",
        id="missing-embedder-version",
    ),
    pytest.param(
        edit_manifest(_pop("training")), r"training: Field required", id="missing-training"
    ),
    pytest.param(edit_manifest(_pop("files")), r"files: Field required", id="missing-files"),
    pytest.param(
        edit_manifest(_pop("files", REFERENCE)), r"files: .*reference\.npz", id="missing-ref-hash"
    ),
    pytest.param(
        edit_manifest(_set("surprise", value=1)), r"surprise: Extra inputs", id="unknown-key"
    ),
    pytest.param(
        edit_manifest(_set("embedder", "colour", value="red")),
        r"embedder\.colour: Extra inputs",
        id="unknown-nested-key",
    ),
    pytest.param(
        edit_manifest(_set("embedding_dim", value="thirty-two")),
        r"embedding_dim: Input should be a valid integer",
        id="dim-as-string",
    ),
    pytest.param(
        edit_manifest(_set("embedding_dim", value=3.5)),
        r"embedding_dim: .*integer",
        id="dim-fraction",
    ),
    pytest.param(
        edit_manifest(_set("embedding_dim", value=0)),
        r"embedding_dim: Input should be greater than or equal to 1",
        id="dim-zero",
    ),
    pytest.param(
        edit_manifest(_set("embedding_dim", value=DIM - 1)),
        rf"classifier\.npz:scaler_mean has shape \({DIM},\), "
        rf"but manifest\.json says embedding_dim={DIM - 1}",
        id="dim-wrong",
    ),
    pytest.param(
        edit_manifest(_set("embedder", value="x")),
        r"embedder: Input should be a valid dictionary",
        id="embedder-not-object",
    ),
    pytest.param(
        edit_manifest(_set("files", value=["classifier.npz"])),
        r"files: Input should be a valid dictionary",
        id="files-list",
    ),
    pytest.param(
        edit_manifest(_set("files", CLASSIFIER, value="ABC")),
        r"sha256 of 'classifier\.npz' is not 64 lowercase hex",
        id="bad-hash-text",
    ),
    pytest.param(
        edit_manifest(_set("files", "../evil.npz", value="0" * 64)),
        r"'\.\./evil\.npz' must be a plain name",
        id="path-in-files",
    ),
    pytest.param(
        edit_manifest(_set("thresholds", "flag", value=1.5)),
        r"thresholds\.flag: Input should be less than 1",
        id="flag-out-of-range",
    ),
    pytest.param(
        edit_manifest(_set("thresholds", "flag", value=float("nan"))),
        r"thresholds\.flag is nan",
        id="flag-nan",
    ),
    pytest.param(
        edit_manifest(_set("detectors", "thresholds", "mmd", "32", value=float("inf"))),
        r"detectors\.thresholds\.mmd\.32 is inf",
        id="threshold-inf",
    ),
    pytest.param(
        edit_manifest(_set("training", "holdout_metrics", "roc_auc", value=float("nan"))),
        r"training\.holdout_metrics\.roc_auc is nan",
        id="holdout-metric-nan",
    ),
    pytest.param(
        edit_manifest(_set("schema_version", value=2)), r"schema_version 2", id="schema-2"
    ),
    pytest.param(
        edit_manifest(_set("created_at", value="2024-01-01T00:00:00")),
        r"created_at must carry a timezone",
        id="naive-time",
    ),
    pytest.param(
        edit_manifest(_set("detectors", "thresholds", value={})),
        r"detectors: .*thresholds is empty",
        id="thresholds-empty",
    ),
    pytest.param(
        edit_manifest(_set("detectors", "thresholds", "mmd", "big", value=0.1)),
        r"thresholds\.mmd must map window sizes",
        id="threshold-size-not-int",
    ),
    pytest.param(
        edit_manifest(_pop("detectors", "thresholds", "mmd", "32")),
        r"thresholds\.\w+ covers window sizes",
        id="threshold-sizes-differ",
    ),
    pytest.param(
        edit_manifest(_pop("detectors", "stream_stats", "score")),
        r"stream_stats lacks \['score'\]",
        id="stream-stats-missing",
    ),
    pytest.param(
        edit_manifest(_set("detectors", "reference_confidence", "bogus", value=0.5)),
        r"reference_confidence must have exactly the keys",
        id="reference-confidence-key",
    ),
    pytest.param(
        edit_manifest(_set("detectors", "reference_confidence", "mean_confidence", value=0.2)),
        r"reference_confidence\.mean_confidence is 0\.2",
        id="reference-confidence-range",
    ),
    # -- payload files: presence and hashes
    pytest.param(_unlink(CLASSIFIER), r"classifier\.npz is missing", id="classifier-missing"),
    pytest.param(_unlink(REFERENCE), r"reference\.npz is missing", id="reference-missing"),
    pytest.param(
        _replace_with_dir(CLASSIFIER),
        r"classifier\.npz in bundle .* cannot be read",
        id="classifier-dir",
    ),
    pytest.param(
        _flip(CLASSIFIER), r"classifier\.npz in .* does not match its sha256", id="classifier-hash"
    ),
    pytest.param(
        _flip(REFERENCE), r"reference\.npz in .* does not match its sha256", id="reference-hash"
    ),
    pytest.param(
        _copy_file(REFERENCE, CLASSIFIER), r"classifier\.npz in .* sha256", id="swapped-payloads"
    ),
    # -- classifier.npz: container
    pytest.param(
        lambda b: put_payload(b, CLASSIFIER, b""),
        r"classifier\.npz is not a readable \.npz",
        id="classifier-empty",
    ),
    pytest.param(
        lambda b: put_payload(b, CLASSIFIER, b"\x00garbage" * 50),
        r"classifier\.npz is not a readable \.npz",
        id="classifier-garbage",
    ),
    pytest.param(
        lambda b: put_payload(b, CLASSIFIER, (b / CLASSIFIER).read_bytes()[:300]),
        r"classifier\.npz is not a readable \.npz",
        id="classifier-truncated",
    ),
    pytest.param(
        lambda b: put_payload(b, CLASSIFIER, npy_bytes(np.zeros(DIM))),
        r"classifier\.npz is not a readable \.npz file: it is a single \.npy array",
        id="classifier-is-npy",
    ),
    pytest.param(
        _object_coef,
        r"classifier\.npz is not a readable \.npz file: "
        r"array 'coef' holds Python objects .*never unpickled",
        id="classifier-pickle",
    ),
    pytest.param(
        _member("coef", b"abc"),
        r"classifier\.npz .* holds 'coef', which is not a \.npy array",
        id="non-npy-member",
    ),
    pytest.param(
        _member("coef.npy", _huge_header),
        r"classifier\.npz .* array 'coef' declares shape \(99999999999,\)",
        id="huge-declared-shape",
    ),
    pytest.param(
        _member("coef.npy", _npy_version_3),
        r"classifier\.npz .* array 'coef' uses \.npy format version 3\.0",
        id="npy-version-3",
    ),
    pytest.param(
        _member("coef.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}  \n"),
        r"classifier\.npz is not a readable \.npz file \(",
        id="corrupt-npy-header",
    ),
    # -- classifier.npz: arrays
    pytest.param(
        edit_arrays(CLASSIFIER, coef=None),
        r"classifier\.npz lacks arrays \['coef'\]",
        id="coef-missing",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, intercept=None),
        r"classifier\.npz lacks arrays \['intercept'\]",
        id="intercept-missing",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, coef=np.ones(DIM + 1)),
        rf"classifier\.npz:coef has shape \({DIM + 1},\)",
        id="coef-wrong-length",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, coef=np.ones((2, DIM))),
        rf"classifier\.npz:coef has shape \(2, {DIM}\)",
        id="coef-2d",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, scaler_mean=np.ones(3)),
        r"classifier\.npz:scaler_mean has shape \(3,\)",
        id="mean-wrong-length",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, coef=with_nan),
        r"classifier\.npz:coef contains NaN or Inf",
        id="coef-nan",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, scaler_mean=lambda a: with_nan(a, np.inf)),
        r"classifier\.npz:scaler_mean contains NaN or Inf",
        id="mean-inf",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, scaler_scale=with_nan),
        r"classifier\.npz:scaler_scale contains NaN or Inf",
        id="scale-nan",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, scaler_scale=lambda a: with_nan(a, 0.0)),
        r"classifier\.npz:scaler_scale has non-positive entries",
        id="scale-zero",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, intercept=np.array([np.nan])),
        r"classifier\.npz:intercept must be one finite number",
        id="intercept-nan",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, intercept=np.zeros(2)),
        r"classifier\.npz:intercept must be one finite number",
        id="intercept-two",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, coef=np.ones(DIM, dtype=complex)),
        r"classifier\.npz:coef has dtype complex128",
        id="coef-complex",
    ),
    pytest.param(
        edit_arrays(CLASSIFIER, coef=np.array(["1.0"] * DIM)),
        r"classifier\.npz:coef has dtype <U3",
        id="coef-strings",
    ),
    # -- reference.npz
    pytest.param(
        edit_arrays(REFERENCE, embeddings=None),
        r"reference\.npz lacks arrays \['embeddings'\]",
        id="ref-embeddings-missing",
    ),
    pytest.param(
        edit_arrays(REFERENCE, embeddings=lambda a: a[:, :-1]),
        rf"reference\.npz:embeddings has shape \(\d+, {DIM - 1}\), expected \(n, {DIM}\)",
        id="ref-embeddings-dim",
    ),
    pytest.param(
        edit_arrays(REFERENCE, embeddings=np.ones(DIM)),
        rf"reference\.npz:embeddings has shape \({DIM},\)",
        id="ref-embeddings-1d",
    ),
    pytest.param(
        edit_arrays(REFERENCE, embeddings=with_nan),
        r"reference\.npz:embeddings contains NaN or Inf",
        id="ref-embeddings-nan",
    ),
    pytest.param(
        edit_arrays(REFERENCE, scores=lambda a: a[:-1]),
        r"reference\.npz:scores has shape",
        id="ref-scores-length",
    ),
    pytest.param(
        edit_arrays(REFERENCE, scores=with_nan),
        r"reference\.npz:scores contains NaN or Inf",
        id="ref-scores-nan",
    ),
    pytest.param(
        edit_arrays(REFERENCE, scores=lambda a: a + 2),
        r"reference\.npz:scores must be probabilities in \[0, 1\]",
        id="ref-scores-range",
    ),
    pytest.param(
        edit_arrays(REFERENCE, labels=lambda a: np.full(a.shape, 2)),
        r"reference\.npz:labels must be 0 or 1",
        id="ref-labels-values",
    ),
    pytest.param(
        edit_arrays(REFERENCE, det_mmd_rff_w=lambda a: a[:, :-1]),
        r"reference\.npz:det_mmd_rff_w has shape \(\d+, 31\), expected \(\d+, 32\)",
        id="ref-rff-shape",
    ),
    pytest.param(
        edit_arrays(REFERENCE, det_mmd_rff_b=lambda a: a[:-1]),
        r"reference\.npz:det_mmd_rff_\w+ has shape",
        id="ref-rff-count",
    ),
    pytest.param(
        edit_arrays(REFERENCE, det_pca_reconstruction_components=with_nan),
        r"reference\.npz:det_pca_reconstruction_components contains NaN or Inf",
        id="ref-pca-nan",
    ),
    pytest.param(
        _short_profile,
        r"reference\.npz:det_confidence_shift_profile has shape \(2,\), expected \(3,\)",
        id="ref-profile-length",
    ),
    pytest.param(
        edit_arrays(REFERENCE, notes=np.array(["hello"])),
        r"reference\.npz:notes has dtype <U5",
        id="ref-extra-strings",
    ),
]


@pytest.mark.parametrize(("mutate", "pattern"), CASES)
def test_refusal_names_the_problem(
    bundle_dir: Path, tmp_path: Path, mutate: Callable[[Path], None], pattern: str
) -> None:
    """Each problem is refused at load, and the message names the file and the key/array."""
    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)
    mutate(bundle)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    assert re.search(pattern, str(info.value)), str(info.value)


TOKEN = "fuzz-admin-token-0123456789"


@pytest.fixture(scope="module")
def admin_sidecar(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A started sidecar serving the valid bundle, with the admin RPCs on."""
    home = tmp_path_factory.mktemp("admin-sidecar")
    token = home / "admin.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    settings_ = load_settings(
        bundle=bundle_dir,
        port=0,
        metrics_port=0,
        admin_enabled=True,
        admin_token_file=token,
        state_dir=home / "state",
    )
    sc = Sidecar(settings_, bundle=load_bundle(bundle_dir)).start()
    yield sc
    sc.stop(grace=0.5)


def test_hot_reload_refuses_every_broken_bundle_and_keeps_serving(
    admin_sidecar: Sidecar, bundle_dir: Path, tmp_path: Path
) -> None:
    """Admin.ReloadBundle with each broken bundle above: FAILED_PRECONDITION carrying the
    loader's message (never INTERNAL), and the original bundle goes on serving."""
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(admin_sidecar.grpc_target) as ch:
        admin, monitor = pb_grpc.AdminStub(ch), pb_grpc.MonitorStub(ch)
        before = monitor.GetStatus(pb.GetStatusRequest()).bundle_sha256
        for i, case in enumerate(CASES):
            mutate, pattern = case.values
            bundle = tmp_path / f"case-{i}"
            shutil.copytree(bundle_dir, bundle)
            mutate(bundle)
            with pytest.raises(grpc.RpcError) as info:
                admin.ReloadBundle(pb.ReloadBundleRequest(bundle_path=str(bundle)), metadata=auth)
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (case.id, details)
            assert "previous one keeps serving" in details, (case.id, details)
            assert re.search(pattern, details), (case.id, details)
        assert monitor.GetStatus(pb.GetStatusRequest()).bundle_sha256 == before
        reply = monitor.Classify(
            pb.ClassifyRequest(embedding=pb.Embedding(f32le=unit_rows(1).tobytes()))
        )
        assert 0.0 <= reply.p_unsafe <= 1.0


class _Tripwire:
    """Unpickling this creates ``marker``: proof of whether a loader unpickled anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.marker.touch, ())


@pytest.mark.parametrize("name", [CLASSIFIER, REFERENCE])
def test_a_pickle_in_an_npz_is_refused_without_being_unpickled(
    bundle_dir: Path, tmp_path: Path, name: str
) -> None:
    """An object array whose unpickling has a side effect: refused, and the side effect absent
    (the tripwire is shown to work with numpy's own allow_pickle=True first)."""
    marker = tmp_path / "unpickled"
    payload = npz_bytes({"probe": np.array([_Tripwire(marker)], dtype=object)}, allow_pickle=True)
    with np.load(io.BytesIO(payload), allow_pickle=True) as z:
        z["probe"]
    assert marker.exists()
    marker.unlink()

    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)
    arrays: dict[str, Any] = arrays_of(bundle, name)
    arrays["probe"] = np.array([_Tripwire(marker)], dtype=object)
    put_payload(bundle, name, npz_bytes(arrays, allow_pickle=True))
    with pytest.raises(BundleError, match=rf"{re.escape(name)} .*'probe' holds Python objects"):
        load_bundle(bundle)
    assert not marker.exists()


def test_unlisted_files_in_the_directory_are_ignored(bundle_dir: Path, tmp_path: Path) -> None:
    """Only files the manifest pins are read: a stray file (even a bad npz) changes nothing."""
    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)
    (bundle / "notes.npz").write_bytes(b"not an archive")
    (bundle / "README").write_text("hello")
    assert load_bundle(bundle).sha256 == load_bundle(bundle_dir).sha256


def test_pristine_copy_loads(bundle_dir: Path) -> None:
    """The control: the unmutated copy every case starts from loads and serves."""
    with copy_of(bundle_dir) as b:
        assert load_outcome(b) is None
