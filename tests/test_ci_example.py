"""The CI workflow example (examples/ci/github-actions-gate.yml) does what docs/gate.md says:
runs the real CLI on a real config, fails the job on FAIL or error, uploads the report
either way. Its gate step's shell script is run here against a stand-in `silentwatch`."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from silentwatch.cli import build_parser
from silentwatch.offline.gate.config import load_gate_config

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "github-actions-gate.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["gate"]["steps"]


def _gate_step(workflow: dict) -> dict:
    return next(s for s in _steps(workflow) if s.get("id") == "gate")


def test_it_runs_on_pull_requests_that_touch_the_gate_inputs(workflow):
    # PyYAML reads the bare key `on` as True.
    trigger = workflow.get("on", workflow.get(True))
    paths = trigger["pull_request"]["paths"]
    assert any(p.startswith("examples/gate/") for p in paths)
    env = workflow["jobs"]["gate"]["env"]
    config = ROOT / env["GATE_CONFIG"]
    assert config.is_file()
    load_gate_config(config)  # a valid gate.yaml, its data inside the repository


def test_the_gate_command_is_one_the_cli_accepts(workflow):
    env = workflow["jobs"]["gate"]["env"]
    line = next(
        ln.strip() for ln in _gate_step(workflow)["run"].splitlines() if "silentwatch gate" in ln
    )
    argv = shlex.split(
        line.replace('"$GATE_CONFIG"', env["GATE_CONFIG"]).replace('"$GATE_OUT"', env["GATE_OUT"])
    )[1:]
    args = build_parser().parse_args(argv)
    assert args.config == Path(env["GATE_CONFIG"]) and args.out == Path(env["GATE_OUT"])


def test_the_report_is_uploaded_whatever_the_verdict(workflow):
    upload = next(s for s in _steps(workflow) if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "${{ env.GATE_OUT }}"


@pytest.mark.parametrize(("code", "report"), [(0, True), (1, True), (2, False)])
def test_the_job_fails_on_fail_and_on_error_and_shows_the_report(workflow, tmp_path, code, report):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "silentwatch"
    # Stands in for the CLI: writes a report (unless it "could not run") and exits `code`.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'out=""; while [ $# -gt 0 ]; do [ "$1" = --out ] && out="$2"; shift; done\n'
        + (f'mkdir -p "$out"; echo "# verdict {code}" > "$out/report.md"\n' if report else "")
        + f"exit {code}\n"
    )  # fmt: skip
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    env = {
        **os.environ,
        **workflow["jobs"]["gate"]["env"],
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
    }
    env["GATE_OUT"] = str(tmp_path / "gate-report")
    # GitHub runs `run:` with `bash -e {0}`.
    script = tmp_path / "step.sh"
    script.write_text(_gate_step(workflow)["run"])
    done = subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == code, done.stdout + done.stderr
    assert f"exit_code={code}" in output.read_text()
    if report:
        assert f"verdict {code}" in summary.read_text()
    else:
        assert not summary.exists()
    if code:
        assert "::error::" in done.stdout
