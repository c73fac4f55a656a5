"""``silentwatch gate`` and ``silentwatch stress`` end to end on tiny real transformers models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
from silentwatch.cli import main
from silentwatch.monitor.bundle import load_bundle

from .tiny_models import save_tiny, write_toy_evalset


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate_cli")
    data = write_toy_evalset(root / "eval.jsonl", 240)
    return {
        "root": root,
        "data": data,
        "a": save_tiny("bert", root / "a", seed=0),
        "b": save_tiny("bert", root / "b", seed=1),
    }


def _config(world: dict[str, Path], tmp_path: Path, new: str, **extra: object) -> Path:
    cfg = {
        "data": {
            "path": str(world["data"]),
            "text_column": "body",
            "label_column": "is_toxic",
            "positive_label": "yes",
        },
        "old": {"embedder": str(world["a"])},
        "new": {"embedder": str(world[new])},
        "embedding": {"cache_dir": str(tmp_path / "cache"), "batch_size": 16},
        "stress": {"fine_steps": 4},
        "output": {"dir": "report"},
        **extra,
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_same_model_passes_with_exit_0_and_a_loadable_bundle(world, tmp_path, capsys) -> None:
    assert main(["gate", "--config", str(_config(world, tmp_path, "a"))]) == 0
    out = capsys.readouterr().out
    assert '"verdict": "pass"' in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["old_on_old"]["roc_auc"] > 0.9  # the tiny model still separates the words
    assert report["real_drift"]["mean_angle_degrees"] < 0.01
    assert report["new_embedder"]["pooling"] == "mean" and report["new_embedder"]["dim"] == 32
    bundle = load_bundle(tmp_path / "report" / "bundle")
    assert bundle.dim == 32
    _serve_and_classify(tmp_path / "report" / "bundle", world)
    for png in ("stress_curves.png", "real_update.png", "reliability.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000
    # A re-run reads the embeddings from the cache and refuses to overwrite the bundle.
    assert main(["gate", "--config", str(_config(world, tmp_path, "a"))]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["gate", "--config", str(_config(world, tmp_path, "a")), "--overwrite"]) == 0


def _serve_and_classify(bundle_dir: Path, world: dict[str, Path]) -> None:
    """The emitted bundle runs in the sidecar: real gRPC over loopback, same scores."""
    import grpc
    import numpy as np

    from silentwatch.monitor.config import load_settings
    from silentwatch.monitor.serving.server import Sidecar
    from silentwatch.offline.embedders import open_embedder
    from silentwatch.v1 import monitor_pb2 as pb
    from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

    bundle = load_bundle(bundle_dir)
    x = open_embedder(str(world["a"])).embed(["green awful hateful river", "lovely kind city"])
    sc = Sidecar(load_settings(bundle=bundle_dir, port=0, metrics_port=0), bundle=bundle).start()
    try:
        with grpc.insecure_channel(sc.grpc_target) as ch:
            r = pb_grpc.MonitorStub(ch).ClassifyBatch(
                pb.ClassifyBatchRequest(
                    request_ids=["t1", "t2"],
                    embedder_version=bundle.manifest.embedder.version,
                    embeddings=pb.EmbeddingMatrix(rows=2, dim=32, f32le=x.astype("<f4").tobytes()),
                ),
                timeout=10,
            )
    finally:
        sc.stop(grace=0.5)
    np.testing.assert_allclose(r.p_unsafe, bundle.scorer.predict_proba(x), atol=1e-6)
    assert r.p_unsafe[0] > r.p_unsafe[1]


def test_another_model_fails_with_exit_1(world, tmp_path, capsys) -> None:
    assert main(["gate", "--config", str(_config(world, tmp_path, "b"))]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and '"verdict": "fail"' in out
    assert not (tmp_path / "report" / "bundle").exists()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**FAIL**" in md


def test_errors_exit_2_with_one_line(world, tmp_path, capsys) -> None:
    bad = _config(world, tmp_path, "a", thresholds={"max_auc_drop": -1})
    assert main(["gate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "thresholds.max_auc_drop" in err[0]
    missing = _config(world, tmp_path, "a")
    cfg = yaml.safe_load(missing.read_text())
    cfg["new"]["embedder"] = str(tmp_path / "no-such-model")
    missing.write_text(yaml.safe_dump(cfg))
    assert main(["gate", "--config", str(missing)]) == 2
    assert "new embedder" in capsys.readouterr().err


def test_stress_command_writes_its_report(world, tmp_path, capsys) -> None:
    rc = main([
        "stress", "--data", str(world["data"]), "--text-column", "body",
        "--label-column", "is_toxic", "--positive-label", "yes",
        "--model", str(world["a"]), "--fine-steps", "4", "--linear-checkpoints", "3",
        "--bootstrap", "50", "--drift-seed", "7", "--cache-dir", str(tmp_path / "c"),
        "--out", str(tmp_path / "stress"),
    ])  # fmt: skip
    assert rc == 0
    payload = json.loads((tmp_path / "stress" / "stress.json").read_text())
    assert len(payload["stress"]["points"]) == 4 * (8 + 4 + 3)  # checkpoints, fine, linear
    assert payload["stress"]["settings"]["seed"] == 7 and payload["data"]["seed"] == 42
    assert payload["stress"]["settings"]["bootstrap"] == 50
    assert "duplicates_dropped" in payload["data"]
    assert payload["separability"][str(world["a"])]["silhouette"] > 0
    assert "Failure threshold" in (tmp_path / "stress" / "stress.md").read_text()
    assert "clean AUC" in capsys.readouterr().out


def _new_side(path: Path, **settings: object) -> Path:
    """The config at ``path`` with ``settings`` under ``new:``."""
    cfg = yaml.safe_load(path.read_text())
    cfg["new"].update(settings)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_per_side_settings_reach_the_embedder_and_the_bundle(world, tmp_path, capsys) -> None:
    from silentwatch.offline.embedders import cache_key, open_embedder

    texts = ["green awful hateful river", "lovely kind city"]
    plain = open_embedder(str(world["a"]))
    odd = open_embedder(str(world["a"]), pooling="cls", normalize=False, max_length=16)
    info = odd.info()
    assert (info.pooling, info.normalized, info.max_length) == ("cls", False, 16)
    assert odd.spec().version == plain.spec().version + "+cls,len16,raw"
    assert odd.spec().pooling == "cls" and odd.spec().normalized is False
    assert cache_key(info, texts) != cache_key(plain.info(), texts)
    assert abs(float(np.linalg.norm(odd.embed(texts)[0])) - 1.0) > 1e-3  # raw, not unit rows
    # A configuration-only update: longer truncation than the texts need gives the same
    # vectors, so it passes, and the re-issued bundle names the new settings.
    path = _new_side(_config(world, tmp_path, "a"), max_length=64)
    assert main(["gate", "--config", str(path)]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["settings_changed"] == ["max_length: 256 -> 64"]
    assert report["configuration_only"] is True
    assert report["new_embedder"]["max_length"] == 64
    spec = load_bundle(tmp_path / "report" / "bundle").manifest.embedder
    assert spec.version == plain.spec().version + "+len64"


def test_bad_settings_and_missing_data_exit_2_with_one_line(world, tmp_path, capsys) -> None:
    path = _new_side(_config(world, tmp_path, "a"), pooling="max")
    assert main(["gate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use one of mean, cls, last_token" in err[0]
    path = _config(world, tmp_path, "a")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["path"] = "no-such.csv"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["gate", "--config", str(path)]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and "no-such.csv does not exist: point data.path at" in err[0]
