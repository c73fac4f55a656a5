"""The KubeRay example (examples/ray/raycluster.yaml) has what docs/scale.md relies on: a
head that serves the job API and runs no replicas, a GPU worker group with one GPU per pod,
one image everywhere, shared storage for the reports; and the doc's `ray job submit` line
is one the CLI accepts, joining the job's cluster with `--ray-address auto`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from silentwatch.cli import build_parser
from silentwatch.offline.execution import ExecutionSettings

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "ray" / "raycluster.yaml"
DOC = ROOT / "docs" / "scale.md"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_it_is_a_kuberay_raycluster_on_the_pinned_ray(cluster):
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    pin = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin and cluster["spec"]["rayVersion"] == pin.group(1)


def test_the_head_serves_the_job_api_and_runs_no_replicas(cluster):
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"] for c in _containers(head["template"]) for p in c["ports"]}
    assert {6379, 8265} <= ports  # GCS; dashboard = `ray job submit --address http://<head>:8265`


def test_a_worker_group_has_one_gpu_per_pod(cluster):
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu")
    (worker,) = _containers(gpu["template"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_one_image_and_one_shared_volume_everywhere(cluster):
    spec = cluster["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    images = {c["image"] for t in templates for c in _containers(t)}
    assert len(images) == 1
    for t in templates:
        mounts = {m["mountPath"] for c in _containers(t) for m in c["volumeMounts"]}
        assert "/data" in mounts
        claims = {v["persistentVolumeClaim"]["claimName"] for v in t["spec"]["volumes"]}
        assert claims == {"silentwatch-gate-data"}
    assert "pip install 'silentwatch[offline,ray]'" in MANIFEST.read_text()


def test_the_doc_names_what_the_manifest_defines(cluster):
    doc = DOC.read_text()
    assert "examples/ray/raycluster.yaml" in doc
    assert f"{cluster['metadata']['name']}-head-svc" in doc  # KubeRay's head service
    assert "nvidia.com/gpu: 1" in doc and "/data" in doc
    for key in ("replicas", "cpus_per_replica", "gpus_per_replica"):
        assert key in doc and key in ExecutionSettings.model_fields


def test_the_docs_job_submit_runs_a_gate_the_cli_accepts():
    lines = [ln for ln in DOC.read_text().splitlines() if ln.startswith("ray job submit")]
    assert lines
    for line in lines:
        argv = shlex.split(line.rstrip("\\"))
        assert argv[argv.index("--address") + 1].endswith(":8265")
        assert "--working-dir" in argv
        args = build_parser().parse_args(argv[argv.index("--") + 2 :])
        assert args.ray_address == "auto"  # joins the job's cluster; `local` would start one
        assert args.out is not None and str(args.out).startswith("/data/")
