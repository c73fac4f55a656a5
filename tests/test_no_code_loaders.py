"""No loader that can execute code anywhere in the package (issue 7, security): bundles,
checkpoints and configs are data. An AST scan of silentwatch/, monitor/ and offline/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("silentwatch", "monitor", "offline")
BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
BANNED_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"}


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def code_loaders(source: str, filename: str = "<src>") -> list[str]:
    """Lines of ``source`` that import a pickle-like module, call eval/exec, load YAML
    unsafely, call ``torch.load`` without ``weights_only=True``, ``numpy.load`` with
    ``allow_pickle=True``, or pass ``trust_remote_code=True``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]  # fmt: skip
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES
        ):
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in {"eval", "exec", "__import__"}:
                found.append(f"{where} {f.id}()")
            if isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else ""
                if owner == "yaml" and f.attr in BANNED_YAML:
                    found.append(f"{where} yaml.{f.attr}()")
                if (
                    owner == "torch"
                    and f.attr == "load"
                    and not _is_const(_kw(node, "weights_only"), True)
                ):
                    found.append(f"{where} torch.load() without weights_only=True")
                if (
                    owner in {"np", "numpy"}
                    and f.attr == "load"
                    and _is_const(_kw(node, "allow_pickle"), True)
                ):
                    found.append(f"{where} numpy.load(allow_pickle=True)")
            if _is_const(_kw(node, "trust_remote_code"), True):
                found.append(f"{where} trust_remote_code=True")
    return found


def test_the_scanner_finds_each_kind_of_loader() -> None:
    bad = (
        "import pickle\nfrom joblib import load\nimport yaml, torch, numpy as np\n"
        "eval('1')\nyaml.load(s)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\nAutoModel.from_pretrained(x, trust_remote_code=True)\n"
    )
    assert len(code_loaders(bad)) == 8
    good = (
        "import yaml, torch, numpy as np\nyaml.safe_load(s)\ntorch.load(p, weights_only=True)\n"
        "np.load(p, allow_pickle=False)\nnp.load(p)\nmodel.eval()\n"
    )
    assert code_loaders(good) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_code_executing_loader_in_the_package(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = [hit for f in files for hit in code_loaders(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "code-executing loaders:\n" + "\n".join(found)
