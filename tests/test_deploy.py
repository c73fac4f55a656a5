"""The deployment files (deploy/docker, deploy/compose, deploy/kubernetes; docs/deploy.md).

No container runtime or cluster is needed. What is checked:

* every ``SILENTWATCH_*`` variable in the Dockerfile, compose.yaml and the Kubernetes manifests
  is a real ``silentwatch serve`` option, and the values parse (``ServeSettings``);
* the Dockerfile installs the base package only (no torch, transformers or offline extra),
  copies what pyproject.toml needs, keeps it in the build context, runs as a numeric non-root
  user, and its HEALTHCHECK command really answers for a live sidecar;
* compose.yaml: its bind mounts exist, the demo command parses with silentwatch's own CLI, the
  scrape target, rule files, Grafana provisioning paths and datasource URL agree with each
  other; ``promtool check config`` passes on prometheus.yml with the repository's rules;
* Kubernetes: the manifests parse; silentwatch is a native sidecar (an init container with
  ``restartPolicy: Always``) after the step that fills its bundle volume; grpc probes on the
  configured port; read-only bundle mount; resources; security context; the termination grace
  period covers drain + grace; Service, ServiceMonitor and plain scrape-config ports agree;
  ``kubectl kustomize`` builds the directory when kubectl is installed. (``kubectl apply
  --dry-run=client`` needs an API server even with ``--validate=false``, so it is not used.)
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from silentwatch.cli import build_parser
from silentwatch.monitor.config import ServeSettings
from silentwatch.monitor.serving.server import SERVICE_NAME

from .prometheus_bin import prometheus_binary

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
PROMETHEUS_YML = COMPOSE_DIR / "prometheus.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "kubernetes"
SCRAPE_CONFIG = K8S / "prometheus-scrape-config.yaml"

PREFIX = "SILENTWATCH_"
SIDECAR = "silentwatch"  # the sidecar's container name in moderation-deployment.yaml
DEFAULTS = ServeSettings.model_fields


def _default(name: str) -> Any:
    return DEFAULTS[name].default


# -- Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0-based index of the FROM it belongs to
    cmd: str  # upper case
    args: str


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        buf = ""
        if cmd.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, cmd.upper(), args.strip()))
    return out


def final_stage() -> list[Instruction]:
    ins = dockerfile()
    last = max(i.stage for i in ins)
    return [i for i in ins if i.stage == last]


def dockerfile_env() -> dict[str, str]:
    """ENV of the final (runtime) stage."""
    env: dict[str, str] = {}
    for i in final_stage():
        if i.cmd == "ENV":
            for token in shlex.split(i.args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=VALUE in the Dockerfile, not {i.args!r}"
                env[key] = value
    return env


def test_dockerfile_installs_the_base_package_only() -> None:
    ins = dockerfile()
    runs = [i.args for i in ins if i.cmd == "RUN"]
    installs = [
        seg.strip()
        for run in runs
        for seg in run.split("&&")
        if re.search(r"\bpip\b.*\binstall\b", seg) and "uninstall" not in seg
    ]
    assert installs, "no pip install in the Dockerfile"
    for seg in installs:
        tokens = shlex.split(seg)
        assert "-c" in tokens and tokens[tokens.index("-c") + 1] == "constraints.txt", seg
        for t in tokens:
            low = t.lower()
            assert not any(w in low for w in ("torch", "transformers", "offline", "[")), (
                f"the sidecar image must not install {t!r}: {seg}"
            )
    # The build fails if torch or transformers end up installed anyway.
    assert any("find_spec" in r and "torch" in r and "transformers" in r for r in runs)


def test_dockerfile_stages_user_ports_entrypoint() -> None:
    ins = dockerfile()
    froms = [i for i in ins if i.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a runtime stage"
    args = {
        k: v for i in ins if i.cmd == "ARG" and "=" in i.args for k, v in [i.args.split("=", 1)]
    }
    for f in froms:
        image = f.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert image == "python:3.11-slim", f.args
    final = final_stage()
    assert any(i.cmd == "COPY" and "--from=" in i.args for i in final)
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it without a runAsUser.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    exposed = {int(p.split("/")[0]) for i in final if i.cmd == "EXPOSE" for p in i.args.split()}
    assert exposed == {_default("port"), _default("metrics_port")}
    (entry,) = [json.loads(i.args) for i in final if i.cmd == "ENTRYPOINT"]
    (cmd,) = [json.loads(i.args) for i in final if i.cmd == "CMD"]
    assert entry == ["silentwatch"] and cmd == ["serve"]


def test_dockerfile_copies_what_pyproject_needs_and_dockerignore_keeps_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied: set[str] = set()
    for i in dockerfile():
        if i.cmd == "COPY" and "--from=" not in i.args:
            *sources, _dest = shlex.split(i.args)
            copied |= {s.rstrip("/") for s in sources if not s.startswith("--")}
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)}"
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"

    patterns = [
        p.strip()
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        result = False
        for pat in patterns:
            neg = pat.startswith("!")
            pat = pat.lstrip("!").strip("/")
            alts = [pat, pat[3:]] if pat.startswith("**/") else [pat]
            prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alts):
                result = not neg
        return result

    for src in sorted(copied):
        path = ROOT / src
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert not ignored(rel), f".dockerignore drops {rel}, which the image needs"
    for heavy in (".venv", ".git", "gate-runs", "docs/runs", "tests", ".cache"):
        assert ignored(heavy) or not (ROOT / heavy).exists(), f"{heavy} is sent to docker"


def test_dockerfile_healthcheck_answers_for_a_live_sidecar(sidecar_factory: Any) -> None:
    (hc,) = [i.args for i in final_stage() if i.cmd == "HEALTHCHECK"]
    command = json.loads(hc[hc.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"], command
    code = command[2]
    assert f"service={SERVICE_NAME!r}" in code
    sc = sidecar_factory()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}

    def probe(port: int) -> int:
        env[f"{PREFIX}PORT"] = str(port)
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        ).returncode

    assert probe(sc.grpc_port) == 0
    port = sc.grpc_port
    sc.stop(grace=0.1)
    assert probe(port) != 0


# -- SILENTWATCH_* variables everywhere -----------------------------------------------------


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for _, d in k8s_docs()
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def deployment() -> dict[str, Any]:
    (d,) = k8s("Deployment")
    return d


def pod_spec() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]


def sidecar_container() -> dict[str, Any]:
    (c,) = [c for c in pod_spec().get("initContainers", []) if c["name"] == SIDECAR]
    return c


def sidecar_env() -> dict[str, str]:
    """The sidecar's SILENTWATCH_* environment: its ConfigMaps (envFrom), then env."""
    c = sidecar_container()
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        (cm,) = k8s("ConfigMap", ref["configMapRef"]["name"])
        env.update(cm["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def setting(env: dict[str, str], name: str) -> Any:
    """A setting's value as the sidecar sees it (validated), falling back to the default."""
    key = PREFIX + name.upper()
    if key not in env:
        return _default(name)
    return getattr(ServeSettings(**{"bundle": "/b", name: env[key]}), name)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def env_sources() -> dict[str, dict[str, str]]:
    sources = {"Dockerfile": dockerfile_env()}
    for name, svc in compose()["services"].items():
        sources[f"compose.yaml service {name}"] = compose_env(svc)
    for path, doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            sources[f"{path.name} ConfigMap {doc['metadata']['name']}"] = {
                k: str(v) for k, v in doc.get("data", {}).items()
            }
    spec = pod_spec()
    for c in spec.get("initContainers", []) + spec["containers"]:
        sources[f"container {c['name']}"] = {
            e["name"]: str(e.get("value", "")) for e in c.get("env", [])
        }
    return {
        where: {k: v for k, v in env.items() if k.startswith(PREFIX)}
        for where, env in sources.items()
    }


def test_every_silentwatch_variable_is_a_real_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = 0
    for where, env in env_sources().items():
        for key in env:
            field = key.removeprefix(PREFIX).lower()
            assert field in DEFAULTS, (
                f"{where}: {key} is not a `silentwatch serve` option "
                f"(typo? known: {', '.join(sorted(DEFAULTS))})"
            )
        # The values parse as the sidecar would read them from its environment.
        for k in [k for k in os.environ if k.startswith(PREFIX)]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        if env:
            ServeSettings(**({} if f"{PREFIX}BUNDLE" in env else {"bundle": "/b"}))
        seen += len(env)
    assert seen >= 10, "expected the Dockerfile, compose.yaml and the ConfigMap to set some"


def test_the_image_binds_every_interface_and_expects_the_bundle_at_a_mount() -> None:
    env = dockerfile_env()
    assert env[f"{PREFIX}HOST"] == "0.0.0.0"
    assert env[f"{PREFIX}METRICS_HOST"] == "0.0.0.0"
    assert env[f"{PREFIX}BUNDLE"] == "/bundle"


# -- compose ----------------------------------------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """Container path -> (host path, read-only) for every bind mount."""
    out: dict[str, tuple[Path, bool]] = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            src, dst, ro = v["source"], v["target"], bool(v.get("read_only"))
        else:
            src, dst, *opts = v.split(":")
            ro = bool(opts) and "ro" in opts[0].split(",")
        if src.startswith((".", "/")):
            out[dst] = ((COMPOSE_DIR / src).resolve(), ro)
    return out


def under_mount(service: dict[str, Any], container_path: str) -> Path:
    """Host path of a container path, through the service's bind mounts."""
    for dst, (src, _ro) in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == dst or container_path.startswith(dst.rstrip("/") + "/"):
            return src / container_path[len(dst) :].lstrip("/")
    raise AssertionError(f"{container_path} is not under any bind mount")


def test_compose_parses_and_its_bind_mounts_exist_read_only() -> None:
    services = compose()["services"]
    assert {"sidecar", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        for dst, (src, ro) in mounts(svc).items():
            assert src.exists(), f"compose service {name}: {src} (-> {dst}) is not in the repo"
            assert ro, f"compose service {name}: mount {dst} should be read-only"
    build = services["sidecar"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_runs_the_demo_paced_and_publishes_the_default_ports() -> None:
    sidecar = compose()["services"]["sidecar"]
    command = sidecar["command"]
    assert isinstance(command, list), "use the exec form (a list)"
    args = build_parser().parse_args(command)
    assert command[0] == "demo" and args.keep_serving and args.rate > 0
    # --keep-serving without --port serves on the defaults; those are what is published.
    published = {int(str(p).split(":")[-1]) for p in sidecar["ports"]}
    assert published == {_default("port"), _default("metrics_port")}
    assert args.port is None and args.metrics_port is None


def test_compose_prometheus_scrapes_the_sidecar_and_loads_the_rules() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    flags = dict(f.split("=", 1) if "=" in f else (f, "") for f in prom["command"])
    assert "--web.enable-lifecycle" in flags
    assert under_mount(prom, flags["--config.file"]) == PROMETHEUS_YML
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert cfg["global"]["scrape_interval"] == "5s"
    assert cfg["global"]["evaluation_interval"] == "5s"
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "silentwatch"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"sidecar:{_default('metrics_port')}"]
    assert targets[0].split(":")[0] in services
    # The rule glob, seen through the mount, picks up the repository's rule files.
    rules = sorted(RULES_DIR.glob("*.yml"))
    assert rules, f"no rule files in {RULES_DIR}"
    for pattern in cfg["rule_files"]:
        host_dir = under_mount(prom, str(Path(pattern).parent))
        assert host_dir == RULES_DIR
        assert all(fnmatch.fnmatch(r.name, Path(pattern).name) for r in rules)


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    """rule_files point at the container's /etc/prometheus/rules: check a copy whose
    rule_files point at the repository's rules instead, so promtool checks them too."""
    promtool = prometheus_binary("promtool")
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["rule_files"] = [str(RULES_DIR / Path(p).name) for p in cfg["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    n = len(list(RULES_DIR.glob("*.yml")))
    assert f"{n} rule files found" in out, out


def test_compose_grafana_is_provisioned_from_the_repository() -> None:
    services = compose()["services"]
    graf = services["grafana"]
    env = compose_env(graf)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert any(str(p).endswith(":3000") for p in graf["ports"])
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/silentwatch.yaml").read_text())
    for p in providers["providers"]:
        assert under_mount(graf, p["options"]["path"]) == GRAFANA / "dashboards"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert under_mount(graf, home).is_file()
    assert under_mount(graf, "/etc/grafana/provisioning/datasources").is_dir()
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    for ds in sources["datasources"]:
        m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", ds["url"])
        assert m is not None, ds["url"]
        assert m.group(1) in services and m.group(2) == "9090", ds["url"]


# -- Kubernetes -------------------------------------------------------------------------------


def test_every_kubernetes_yaml_parses_into_named_objects() -> None:
    files = sorted(K8S.glob("*.y*ml"))
    assert len(files) >= 6
    for path, doc in k8s_docs():
        assert isinstance(doc, dict), path
        assert doc.get("apiVersion") and doc.get("kind"), path
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path


def test_kustomization_lists_the_manifests_and_rewrites_real_images() -> None:
    (kust,) = [d for _, d in k8s_docs() if d["kind"] == "Kustomization"]
    listed = set(kust["resources"])
    for r in listed:
        assert (K8S / r).is_file(), r
    others = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml", SCRAPE_CONFIG.name}
    assert listed == others
    spec = pod_spec()
    images = {c["image"].rsplit(":", 1)[0] for c in spec["containers"] + spec["initContainers"]}
    for img in kust.get("images", []):
        assert img["name"] in images, f"kustomization images: {img['name']} is in no container"


def test_silentwatch_is_a_native_sidecar_after_its_bundle_is_in_place() -> None:
    spec = pod_spec()
    assert SIDECAR not in [c["name"] for c in spec["containers"]]
    inits = spec["initContainers"]
    names = [c["name"] for c in inits]
    side = sidecar_container()
    assert side.get("restartPolicy") == "Always"
    (bundle_mount,) = [m for m in side["volumeMounts"] if m["mountPath"] == "/bundle"]
    # Whatever writes the bundle volume must be a plain init container that runs before it.
    for i, c in enumerate(inits):
        for m in c.get("volumeMounts", []):
            if m["name"] == bundle_mount["name"] and not m.get("readOnly"):
                assert c.get("restartPolicy") is None, c["name"]
                assert i < names.index(SIDECAR), f"{c['name']} must run before the sidecar"
    # Every app container calls the sidecar on loopback.
    assert spec["containers"]


def test_probes_are_grpc_on_the_configured_port() -> None:
    env = sidecar_env()
    port = setting(env, "port")
    metrics_port = setting(env, "metrics_port")
    assert setting(env, "host") == "0.0.0.0", "kubelet probes connect to the pod IP"
    assert setting(env, "metrics_host") == "0.0.0.0", "Prometheus connects to the pod IP"
    c = sidecar_container()
    ports = {p["containerPort"]: p for p in c["ports"]}
    assert set(ports) == {port, metrics_port}
    services = {
        "startupProbe": SERVICE_NAME,
        "readinessProbe": SERVICE_NAME,
        "livenessProbe": "",
    }
    for probe, service in services.items():
        g = c[probe]["grpc"]
        assert g["port"] == port, f"{probe} probes {g['port']}, the sidecar listens on {port}"
        assert g.get("service", "") == service, probe
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 30


def test_bundle_is_mounted_read_only_where_the_sidecar_looks() -> None:
    env = sidecar_env()
    c = sidecar_container()
    (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(setting(env, "bundle"))]
    assert m.get("readOnly") is True
    assert m["name"] in {v["name"] for v in pod_spec()["volumes"]}


def test_resources_requests_and_limits() -> None:
    spec = pod_spec()
    side = sidecar_container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(side["resources"][kind]), kind
    for c in spec["containers"] + spec["initContainers"]:
        assert "memory" in c["resources"]["requests"], c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]


def test_security_context() -> None:
    spec = pod_spec()
    # A Service named "silentwatch" would otherwise inject SILENTWATCH_PORT=tcp://...
    assert spec.get("enableServiceLinks") is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
    side = sidecar_container()["securityContext"]
    assert side.get("runAsNonRoot", True) and side["runAsUser"] != 0


def test_termination_grace_covers_drain_and_grace() -> None:
    env = sidecar_env()
    needed = setting(env, "drain_seconds") + setting(env, "grace_seconds")
    assert pod_spec()["terminationGracePeriodSeconds"] >= needed


def test_service_and_servicemonitor_ports_agree() -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    side_ports = sidecar_container()["ports"]
    metrics_port = setting(sidecar_env(), "metrics_port")
    services = k8s("Service")
    assert "silentwatch" not in {s["metadata"]["name"] for s in services}
    for s in services:
        sel = s["spec"]["selector"]
        assert sel.items() <= labels.items(), f"Service {s['metadata']['name']} selects no pod"
    (mon,) = k8s("ServiceMonitor")
    want = mon["spec"]["selector"]["matchLabels"]
    (svc,) = [s for s in services if want.items() <= s["metadata"].get("labels", {}).items()]
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    for ep in mon["spec"]["endpoints"]:
        port = by_name[ep["port"]]
        target = port["targetPort"]
        if isinstance(target, str):
            (target,) = [p["containerPort"] for p in side_ports if p["name"] == target]
        assert target == metrics_port, "the ServiceMonitor's port must reach /metrics"
    assert "metrics" in by_name


def test_plain_scrape_config_keeps_the_sidecar_metrics_port(tmp_path: Path) -> None:
    (cm,) = [d for d in yaml.safe_load_all(SCRAPE_CONFIG.read_text()) if d]
    ((key, text),) = cm["data"].items()
    cfg = yaml.safe_load(text)
    (job,) = cfg["scrape_configs"]
    keep = [
        r
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
        and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    ]
    (rule,) = keep
    metrics_port = setting(sidecar_env(), "metrics_port")
    names = [p["name"] for p in sidecar_container()["ports"] if p["containerPort"] == metrics_port]
    assert names and re.fullmatch(rule["regex"], names[0])

    promtool = prometheus_binary("promtool")
    path = tmp_path / key
    path.write_text(text)
    r = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    if r.returncode and "kubernetes_sd_configs not found" in r.stdout + r.stderr:
        # Debian's Prometheus is built without Kubernetes discovery: check the rest.
        job["static_configs"] = [{"targets": [f"pod:{metrics_port}"]}]
        del job["kubernetes_sd_configs"]
        path.write_text(yaml.safe_dump(cfg))
        r = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 0, r.stdout + r.stderr


def test_kubectl_kustomize_builds_the_directory() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    r = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["ConfigMap", "Deployment", "Service", "Service", "ServiceMonitor"]
