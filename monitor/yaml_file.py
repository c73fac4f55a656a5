"""Reading a YAML settings file: one reader for ``serve --config``, ``gate.yaml`` and
``audit.yaml``, so every configuration file fails the same, precise way.

String values may name environment variables as ``${NAME}`` (e.g. a data folder that
differs between machines: ``path: ${SILENTWATCH_DATA}/xstest/xstest_prompts.csv``); an
unset variable is an error naming the key and the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A configuration problem, naming the offending file or key."""


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """The mapping in the UTF-8 YAML file ``path`` (``{}`` for an empty file).

    ``what`` names the file in messages ("config file", "gate config"); ``expected`` says
    what the mapping must hold. Raises :class:`ConfigError` naming the file (and the line,
    or the key) when it is missing, unreadable, not YAML, not a mapping, or has a key that
    is not a string.

    >>> read_yaml_mapping("nope.yaml", "gate config", "data")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    ConfigError: gate config nope.yaml does not exist
    """
    path = Path(path)
    if not path.is_file():
        what_is = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{what} {path} {what_is}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid YAML: not UTF-8 text (byte {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror})") from None
    if raw is None:  # an empty file: nothing set
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of {expected}, not a YAML {type(raw).__name__}"
        )
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(
                f"{what} {path}: key {key!r} is not a setting name (a {type(key).__name__}); "
                f"the mapping holds {expected}"
            )
    return _expand(raw, f"{what} {path}", "")


def _expand(value: Any, where: str, key: str) -> Any:
    """``value`` with every ``${NAME}`` in its strings replaced by that environment variable.

    >>> os.environ["SW_DOC_DATA"] = "/data"
    >>> _expand({"pairs": {"path": "${SW_DOC_DATA}/pairs.json"}}, "audit config a.yaml", "")
    {'pairs': {'path': '/data/pairs.json'}}
    >>> try:
    ...     _expand({"path": "${SW_DOC_UNSET}/x"}, "audit config a.yaml", "")
    ... except ConfigError as exc:
    ...     print(str(exc)[:66])
    audit config a.yaml: path names ${SW_DOC_UNSET}, which is not set;
    """
    if isinstance(value, dict):
        return {k: _expand(v, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"{where}: {key} names ${{{name}}}, which is not set; export {name} (e.g. "
                    "the folder that holds your data) or write the value out"
                )
            return os.environ[name]

        return _VAR.sub(sub, value)
    return value
