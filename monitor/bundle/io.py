"""Write and load bundles: hashes verified, shapes checked, no pickle.

A bundle directory holds ``manifest.json``, ``classifier.npz`` and
``reference.npz``, and in a multi-head bundle one ``head-<name>.npz`` per further head
(the same four arrays as ``classifier.npz``). Every payload file's sha256 is in the
manifest; loading reads each file once, checks its hash on those bytes and only then
parses them with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from silentwatch.monitor.bundle.manifest import (
    CANARY_FILE,
    CLASSIFIER_FILE,
    MANIFEST_FILE,
    REFERENCE_FILE,
    BundleManifest,
    HeadManifest,
    Thresholds,
    TrainingSummary,
)
from silentwatch.monitor.detection.registry import persisted_arrays
from silentwatch.monitor.scoring import HeadScorer, LinearScorer

CLASSIFIER_KEYS = ("scaler_mean", "scaler_scale", "coef", "intercept")
REFERENCE_REQUIRED = ("embeddings", "scores")


class BundleError(ValueError):
    """A bundle that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Reference:
    """What the monitor compares live traffic against (never refitted online)."""

    embeddings: np.ndarray  # (n, d) float32, as the classifier saw them
    scores: np.ndarray  # (n,) float32, P(unsafe) of those embeddings
    labels: np.ndarray | None  # (n,) int8 when known
    extra: dict[str, np.ndarray]  # detector statistics added by later versions


@dataclass(frozen=True)
class Canaries:
    """Labelled texts shipped with the bundle, to measure accuracy without waiting for labels."""

    texts: list[str]
    labels: np.ndarray  # (n,) int8: the default head's
    # (n, d) float32: the texts under the validated embedder, for paired canaries
    # (docs/detection.md); None in bundles written without them (text mode only).
    embeddings: np.ndarray | None = None
    # (n, k) int8, column j = head j (column 0 == labels); None for one-head bundles.
    head_labels: np.ndarray | None = None


@dataclass(frozen=True)
class Head:
    """One classifier head of a bundle: its name, scorer, thresholds and training record."""

    name: str
    scorer: LinearScorer
    thresholds: Thresholds
    training: TrainingSummary


@dataclass(frozen=True)
class LoadedBundle:
    path: Path
    manifest: BundleManifest
    scorer: LinearScorer  # the default head's
    reference: Reference
    sha256: str  # of manifest.json: identifies the whole bundle, since it pins every file
    # Every head in the bundle's order, the default first (a legacy bundle: one head).
    heads: tuple[Head, ...]
    # All heads at once: one matmul per batch, column j = heads[j].
    head_scorer: HeadScorer
    canaries: Canaries | None = None

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.heads)

    def head_index(self, name: str) -> int:
        """Index of head ``name`` in the bundle's order; ``""`` is the default head (0).

        Raises
        ------
        KeyError
            The bundle has no head of that name (the message lists the ones it has).
        """
        if name == "":
            return 0
        for i, head in enumerate(self.heads):
            if head.name == name:
                return i
        raise KeyError(
            f"the bundle has no head {name!r}; its heads are {', '.join(self.head_names)}"
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_bundle(
    directory: str | os.PathLike[str],
    manifest_fields: dict,
    classifier: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    *,
    canaries: dict[str, np.ndarray] | None = None,
    head_classifiers: Mapping[str, dict[str, np.ndarray]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically: a sibling temp dir is filled, then renamed into place.

    ``manifest_fields`` are the manifest without ``files``; the hashes are added here.
    ``head_classifiers`` maps each of ``manifest_fields["heads"]``' names to its arrays
    (the four of ``classifier``), written to that head's ``file``.
    """
    target = Path(directory)
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass overwrite=True (CLI: --force)")
    payload = {CLASSIFIER_FILE: _npz_bytes(classifier), REFERENCE_FILE: _npz_bytes(reference)}
    if canaries is not None:
        payload[CANARY_FILE] = _npz_bytes(canaries)
    heads = [
        h if isinstance(h, HeadManifest) else HeadManifest.model_validate(h)
        for h in manifest_fields.get("heads", ())
    ]
    arrays = dict(head_classifiers or {})
    named = [h.name for h in heads]
    if sorted(arrays) != sorted(named):
        raise BundleError(
            f"head_classifiers has arrays for heads {sorted(arrays)} but the manifest lists "
            f"heads {named}; give each listed head its arrays"
        )
    for h in heads:
        payload[h.file] = _npz_bytes(arrays[h.name])
    manifest = BundleManifest(
        **manifest_fields, files={name: sha256_bytes(b) for name, b in payload.items()}
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # mkdtemp makes 0700; a bundle is read by a sidecar that may run as another user
        # (a container's non-root uid), and holds no secrets.
        tmp.chmod(0o755)
        for name, data in payload.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST_FILE).write_text(manifest.to_json() + "\n")
        # The loader is the single source of truth for validity: prove the bundle loads
        # before it replaces anything, so a bad write never clobbers a good bundle.
        load_bundle(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _read_file(path: Path, what: str) -> bytes:
    """The bytes of a bundle file; :class:`BundleError` naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{path.name} is missing from bundle {path.parent}; rebuild it with "
            "`silentwatch bundle train`"
        ) from None
    except OSError as exc:  # a directory in its place, permissions, I/O errors
        raise BundleError(
            f"{what} {path.name} in bundle {path.parent} cannot be read "
            f"({exc.strerror or type(exc).__name__}); it must be a readable file"
        ) from None


_NPY_MAGIC = b"\x93NUMPY"


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, fname: str, seen: set[str]) -> None:
    """One archive member: a ``.npy`` array of a plain dtype whose header fits its data.

    Read before ``numpy.load`` touches the data, so that neither a pickled object array nor
    a header claiming a huge shape (an allocation of that size) gets anywhere.
    """
    name = info.filename
    if not name.endswith(".npy"):
        raise BundleError(
            f"{fname} is not a readable .npz file: it holds {name!r}, which is not a .npy "
            "array; a bundle's archives hold named numpy arrays only (numpy.savez)"
        )
    key = name[: -len(".npy")]
    if key in seen:
        raise BundleError(f"{fname} is not a readable .npz file: it holds array {key!r} twice")
    seen.add(key)
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise BundleError(
                f"{fname} is not a readable .npz file: array {key!r} uses .npy format "
                f"version {version[0]}.{version[1]}; bundles use 1.0 or 2.0"
            )
    if dtype.hasobject:
        raise BundleError(
            f"{fname} is not a readable .npz file: array {key!r} holds Python objects "
            f"(dtype {dtype}) that only unpickling could read; bundles hold numeric arrays "
            "and are never unpickled"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise BundleError(
            f"{fname} is not a readable .npz file: array {key!r} declares shape {shape} of "
            f"{dtype} ({nbytes} bytes) but holds only {info.file_size} bytes"
        )


def _parse_npz(data: bytes, fname: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive; :class:`BundleError` for anything else."""
    if data.startswith(_NPY_MAGIC):
        raise BundleError(
            f"{fname} is not a readable .npz file: it is a single .npy array, not an archive "
            "of named arrays (write it with numpy.savez)"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            seen: set[str] = set()
            for info in zf.infolist():
                _check_member(zf, info, fname, seen)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except BundleError:
        raise
    except Exception as exc:  # untrusted bytes: zip, zlib, header and EOF errors alike
        detail = str(exc) or type(exc).__name__
        raise BundleError(f"{fname} is not a readable .npz file ({detail})") from None


def _read_npz(path: Path, expected_sha: str) -> dict[str, np.ndarray]:
    data = _read_file(path, "payload file")
    actual = sha256_bytes(data)
    if actual != expected_sha:
        raise BundleError(
            f"{path.name} in {path.parent} does not match its sha256 in manifest.json "
            f"(expected {expected_sha[:12]}..., found {actual[:12]}...): the file was modified "
            "or truncated after the bundle was written; restore or rebuild the bundle"
        )
    return _parse_npz(data, path.name)


def _require(arrays: dict[str, np.ndarray], keys: tuple[str, ...], fname: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise BundleError(f"{fname} lacks arrays {missing}; rebuild the bundle")


def _scorer(clf: dict[str, np.ndarray], fname: str, dim: int, normalize: bool) -> LinearScorer:
    """A head's scorer from its four arrays, each checked against ``embedding_dim``."""
    _require(clf, CLASSIFIER_KEYS, fname)
    mean = _check_vector(clf["scaler_mean"], "scaler_mean", dim, fname)
    scale = _check_vector(clf["scaler_scale"], "scaler_scale", dim, fname)
    coef = _check_vector(clf["coef"], "coef", dim, fname)
    _check_numeric(clf["intercept"], "intercept", fname)
    intercept = np.asarray(clf["intercept"], dtype=np.float64).reshape(-1)
    if intercept.shape != (1,) or not np.isfinite(intercept).all():
        raise BundleError(f"{fname}:intercept must be one finite number")
    if (scale <= 0).any():
        raise BundleError(f"{fname}:scaler_scale has non-positive entries")
    return LinearScorer.from_standardized(
        mean, scale, coef, float(intercept[0]), normalize=normalize
    )


def _check_numeric(arr: np.ndarray, name: str, fname: str, kinds: str = "fiu") -> None:
    if arr.dtype.kind not in kinds:
        raise BundleError(f"{fname}:{name} has dtype {arr.dtype}, expected a numeric array")


def _check_vector(arr: np.ndarray, name: str, dim: int, fname: str) -> np.ndarray:
    _check_numeric(arr, name, fname)
    arr = np.asarray(arr, dtype=np.float64).reshape(-1) if arr.ndim <= 1 else arr
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise BundleError(
            f"{fname}:{name} has shape {arr.shape}, but manifest.json says embedding_dim={dim}"
        )
    if not np.isfinite(arr).all():
        raise BundleError(f"{fname}:{name} contains NaN or Inf; rebuild the bundle")
    return arr


# reference.npz's other arrays by expected shape: the training mean, and each registered
# detector's fitted state (``det_<detector>_<array>``, declared in the detector registry).
# ``d`` is the embedding dimension; other letters (random features, PCA components) must
# agree across the arrays that share them.
REFERENCE_EXTRA_SHAPES: dict[str, tuple[str, ...]] = {"mean": ("d",), **persisted_arrays()}


def _check_extra(arrays: dict[str, np.ndarray], dim: int) -> None:
    """reference.npz's other arrays (detector state): numeric, finite, of consistent shapes."""
    sizes: dict[str, int] = {"d": dim}
    for name, arr in sorted(arrays.items()):
        _check_numeric(arr, name, REFERENCE_FILE, kinds="fiub")
        expected = REFERENCE_EXTRA_SHAPES.get(name)
        if expected is not None:
            ok = arr.ndim == len(expected) and arr.size > 0
            for axis, symbol in enumerate(expected if ok else ()):
                n = arr.shape[axis]
                ok = ok and (int(symbol) if symbol.isdigit() else sizes.setdefault(symbol, n)) == n
            if not ok:
                want = ", ".join(str(sizes.get(x, x)) for x in expected)
                raise BundleError(
                    f"{REFERENCE_FILE}:{name} has shape {arr.shape}, expected ({want}"
                    f"{',' if len(expected) == 1 else ''}) for embedding_dim={dim}; rebuild the "
                    "bundle with `silentwatch bundle train`"
                )
        if not np.isfinite(arr).all():
            raise BundleError(f"{REFERENCE_FILE}:{name} contains NaN or Inf; rebuild the bundle")


def _non_finite(obj: Any, path: str = "") -> tuple[str, float] | None:
    """Dotted path and value of the first NaN or Infinity in parsed JSON (``json`` takes both)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path, obj
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def load_bundle(directory: str | os.PathLike[str]) -> LoadedBundle:
    """Load and verify a bundle; raise :class:`BundleError` naming the problem."""
    path = Path(directory)
    if not path.is_dir():
        raise BundleError(
            f"bundle directory {path} does not exist; build one with "
            "`silentwatch bundle train` or point --bundle at an existing one"
        )
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        raise BundleError(f"{path} has no {MANIFEST_FILE}; it is not a silentwatch bundle")
    manifest_bytes = _read_file(manifest_path, "the manifest")
    try:
        raw = json.loads(manifest_bytes)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: it is not UTF-8 ({exc})") from None
    except (ValueError, RecursionError) as exc:  # a 5000-digit number; nesting 100000 deep
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    try:
        bad = _non_finite(raw)
    except RecursionError:
        raise BundleError(f"{manifest_path} is invalid: it is nested too deeply") from None
    if bad is not None:
        raise BundleError(
            f"{manifest_path} is invalid: {bad[0] or '(root)'} is {bad[1]!r}; every number "
            "in a manifest is finite (a manifest written by silentwatch never holds NaN or "
            "Infinity)"
        )
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, 1):
        raise BundleError(
            f"{manifest_path} has schema_version {raw.get('schema_version')!r}; this silentwatch "
            "reads schema 1: upgrade silentwatch or rebuild the bundle"
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise BundleError(f"{manifest_path} is invalid: {problems}") from None

    dim = manifest.embedding_dim
    normalize = manifest.embedder.normalized
    clf = _read_npz(path / CLASSIFIER_FILE, manifest.files[CLASSIFIER_FILE])
    scorer = _scorer(clf, CLASSIFIER_FILE, dim, normalize)
    heads = [Head(manifest.default_head, scorer, manifest.thresholds, manifest.training)]
    for hm in manifest.heads:
        try:
            arrays = _read_npz(path / hm.file, manifest.files[hm.file])
            head_scorer = _scorer(arrays, hm.file, dim, normalize)
        except BundleError as exc:
            # Which head is broken matters more to the reader than which file.
            raise BundleError(f"head {hm.name!r}: {exc}") from None
        heads.append(Head(hm.name, head_scorer, hm.thresholds, hm.training))

    ref = _read_npz(path / REFERENCE_FILE, manifest.files[REFERENCE_FILE])
    _require(ref, REFERENCE_REQUIRED, REFERENCE_FILE)
    emb, scores = ref.pop("embeddings"), ref.pop("scores")
    labels = ref.pop("labels", None)
    _check_numeric(emb, "embeddings", REFERENCE_FILE)
    _check_numeric(scores, "scores", REFERENCE_FILE)
    if labels is not None:
        _check_numeric(labels, "labels", REFERENCE_FILE, kinds="fiub")
    if emb.ndim != 2 or emb.shape[1] != dim or emb.shape[0] < 1:
        raise BundleError(f"{REFERENCE_FILE}:embeddings has shape {emb.shape}, expected (n, {dim})")
    if scores.shape != (emb.shape[0],):
        raise BundleError(
            f"{REFERENCE_FILE}:scores has shape {scores.shape}, expected ({emb.shape[0]},)"
        )
    if not np.isfinite(emb).all():
        raise BundleError(f"{REFERENCE_FILE}:embeddings contains NaN or Inf; rebuild the bundle")
    if not np.isfinite(scores).all():
        raise BundleError(f"{REFERENCE_FILE}:scores contains NaN or Inf; rebuild the bundle")
    if ((scores < 0) | (scores > 1)).any():
        raise BundleError(
            f"{REFERENCE_FILE}:scores must be probabilities in [0, 1] (found "
            f"{float(scores.min()):g} to {float(scores.max()):g}); rebuild the bundle"
        )
    if labels is not None:
        if labels.shape != scores.shape:
            raise BundleError(
                f"{REFERENCE_FILE}:labels has shape {labels.shape}, expected {scores.shape}"
            )
        if not np.isin(labels, (0, 1)).all():
            raise BundleError(f"{REFERENCE_FILE}:labels must be 0 or 1")
    _check_extra(ref, dim)
    reference = Reference(
        embeddings=np.ascontiguousarray(emb, dtype=np.float32),
        scores=np.asarray(scores, dtype=np.float32),
        labels=None if labels is None else labels.astype(np.int8),
        extra=ref,
    )
    canaries = None
    if CANARY_FILE in manifest.files:
        can = _read_npz(path / CANARY_FILE, manifest.files[CANARY_FILE])
        _require(can, ("texts", "labels"), CANARY_FILE)
        texts, labels = can["texts"], can["labels"]
        if texts.dtype.kind != "U" or texts.ndim != 1 or labels.shape != texts.shape:
            raise BundleError(f"{CANARY_FILE} must hold 1-D unicode texts and matching labels")
        _check_numeric(labels, "labels", CANARY_FILE, kinds="iub")
        if not np.isin(labels, (0, 1)).all():
            raise BundleError(f"{CANARY_FILE}:labels must be 0 or 1")
        emb_c = can.get("embeddings")
        if emb_c is not None:
            _check_numeric(emb_c, "embeddings", CANARY_FILE)
            if emb_c.shape != (texts.shape[0], dim) or not np.isfinite(emb_c).all():
                raise BundleError(
                    f"{CANARY_FILE}:embeddings must be {texts.shape[0]} finite rows of "
                    f"dimension {dim} (found {emb_c.shape}); rebuild the bundle"
                )
            emb_c = np.ascontiguousarray(emb_c, dtype=np.float32)
        head_labels = _head_labels(can.get("head_labels"), labels, len(heads))
        canaries = Canaries(
            texts=[str(t) for t in texts],
            labels=labels.astype(np.int8),
            embeddings=emb_c,
            head_labels=head_labels,
        )
    return LoadedBundle(
        path=path,
        manifest=manifest,
        scorer=scorer,
        reference=reference,
        sha256=sha256_bytes(manifest_bytes),
        heads=tuple(heads),
        head_scorer=HeadScorer.stack([h.scorer for h in heads]),
        canaries=canaries,
    )


def _head_labels(arr: np.ndarray | None, labels: np.ndarray, k: int) -> np.ndarray | None:
    """canaries.npz's per-head labels: (n, k) 0/1, column 0 the default head's ``labels``.

    None for a one-head bundle (``labels`` says it all) and for a multi-head bundle whose
    canaries carry the default head's labels only.
    """
    if arr is None:
        return None
    _check_numeric(arr, "head_labels", CANARY_FILE, kinds="iub")
    if arr.shape != (labels.shape[0], k):
        raise BundleError(
            f"{CANARY_FILE}:head_labels has shape {arr.shape}, expected ({labels.shape[0]}, {k}): "
            "one row per canary, one column per head; rebuild the bundle"
        )
    if not np.isin(arr, (0, 1)).all():
        raise BundleError(f"{CANARY_FILE}:head_labels must be 0 or 1")
    if not np.array_equal(arr[:, 0], labels):
        raise BundleError(
            f"{CANARY_FILE}:head_labels column 0 (the default head) differs from labels; "
            "rebuild the bundle"
        )
    return None if k == 1 else arr.astype(np.int8)
