"""Configuration errors are :class:`ConfigError` naming the offending key and its source.

``load_settings`` reads flags > ``SILENTWATCH_*`` environment > a YAML file > defaults. For
each source: an unknown key, a wrong type and an out-of-range value name the key (and the
flag, the environment variable or the file it came from); a YAML file that does not parse,
is not UTF-8 or is not a mapping names the file. A hypothesis property covers every setting
with hostile values from every source: ``ConfigError`` naming the key, or valid settings,
never another exception.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from silentwatch.monitor.config import ConfigError, ServeSettings, load_settings

from .fuzzing import examples

BUNDLE = "/nonexistent/bundle"  # load_settings never opens the bundle
KEYS = sorted(ServeSettings.model_fields)


@pytest.fixture(autouse=True)
def no_settings_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a developer or CI exported must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SILENTWATCH_") and name[12:].lower() in KEYS:
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str | bytes, name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def refusal(config_file: Path | None = None, **flags: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file, **flags)
    return str(info.value)


# -- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("nope", 1, "Extra inputs are not permitted"),
        ("port", "abc", "valid integer"),
        ("port", 70000, "less than or equal to 65535"),
        ("workers", 0, "greater than or equal to 1"),
        ("max_batch_rows", 2.5, "valid integer"),
        ("store_ttl_seconds", -1.0, "greater than 0"),
        ("embedder_version_policy", "maybe", "'reject' or 'warn'"),
        ("log_level", "TRACE", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("confidence_band", 1.5, "less than 1"),
        ("window_size", 8, "greater than or equal to 16"),
        ("recording", "perhaps", "valid boolean"),
        ("change_detectors", 5, "valid list"),
        ("change_detectors", "kswin:reconstruction_error", "not a kind:stream pair"),
        ("detectors", "mmd,nope", "unknown detector 'nope'"),
        ("detectors", "mmd,mmd", "listed twice"),
    ],
)
def test_bad_flag_names_the_key(key: str, value: Any, needle: str) -> None:
    """A flag with an unknown name, wrong type or out-of-range value names the key."""
    message = refusal(bundle=BUNDLE, **{key: value})
    assert f"{key}: " in message and needle in message and "(flag)" in message, message


def test_missing_bundle_names_the_key() -> None:
    """The one required setting, absent everywhere, is named."""
    assert "bundle: Field required" in refusal()


# -- environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "key", "needle"),
    [
        ("SILENTWATCH_PORT", "abc", "port", "valid integer"),
        ("SILENTWATCH_PORT", "-1", "port", "greater than or equal to 0"),
        ("SILENTWATCH_WORKERS", "0", "workers", "greater than or equal to 1"),
        ("SILENTWATCH_RECORDING", "perhaps", "recording", "valid boolean"),
        ("SILENTWATCH_STORE_TTL_SECONDS", "-5", "store_ttl_seconds", "greater than 0"),
        ("SILENTWATCH_WINDOW_MODE", "hourly", "window_mode", "'count' or 'time'"),
        ("silentwatch_max_batch_rows", "many", "max_batch_rows", "valid integer"),
    ],
)
def test_bad_environment_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, key: str, needle: str
) -> None:
    """A bad ``SILENTWATCH_*`` value names the key and the variable it came from."""
    monkeypatch.setenv(var, value)
    message = refusal(bundle=BUNDLE)
    assert f"{key}: " in message and needle in message, message
    assert f"(environment variable {var.upper()})" in message, message


def test_flag_beats_a_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Precedence: a valid flag overrides a bad environment value, which is then harmless."""
    monkeypatch.setenv("SILENTWATCH_PORT", "abc")
    assert load_settings(bundle=BUNDLE, port=1234).port == 1234


# -- YAML file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ("nope: 1\n", "nope", "Extra inputs are not permitted"),
        ("max-batch-rows: 8\n", "max-batch-rows", "Extra inputs are not permitted"),
        ("port: abc\n", "port", "valid integer"),
        ("port: [1, 2]\n", "port", "valid integer"),
        ("window_size: {a: 1}\n", "window_size", "valid integer"),
        ("port: 65536\n", "port", "less than or equal to 65535"),
        ("store_capacity: 0\n", "store_capacity", "greater than or equal to 1"),
        ("window_mode: hourly\n", "window_mode", "'count' or 'time'"),
        ("bundle: null\n", "bundle", "valid path"),
    ],
)
def test_bad_yaml_value_names_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, needle: str
) -> None:
    """A bad key or value in the YAML file names the key and the file."""
    path = write(tmp_path, text if key == "bundle" else f"bundle: {BUNDLE}\n{text}")
    message = refusal(path)
    assert f"{key}: " in message and needle in message and f"(in {path})" in message, message


def test_environment_is_named_when_it_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source named is the one whose value was used: the environment over the file."""
    monkeypatch.setenv("SILENTWATCH_WORKERS", "0")
    message = refusal(write(tmp_path, f"bundle: {BUNDLE}\nworkers: 4\n"))
    assert "workers: " in message and "SILENTWATCH_WORKERS" in message, message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port: [1,\n", r"is not valid YAML at line 2, column 1: expected the node content"),
        ("port:\t1\n\tbundle: x\n", r"is not valid YAML at line 1, column 6: found character"),
        ("bundle: *anchor\n", r"is not valid YAML at line 1, column 9: found undefined alias"),
        ("a: 1\n a: 2\nb", r"is not valid YAML at line"),
        (b"\xff\xfebundle: x\n", r"is not valid YAML: not UTF-8 text \(byte 0\)"),
        ("- port\n- 1\n", r"must hold a mapping of setting names to values .*not a YAML list"),
        ("just words\n", r"must hold a mapping .*not a YAML str"),
        ("42\n", r"must hold a mapping .*not a YAML int"),
        (f"bundle: {BUNDLE}\n1: 2\n", r": key 1 is not a setting name \(a int\)"),
        (f"bundle: {BUNDLE}\n~: 2\n", r": key None is not a setting name"),
        (f"bundle: {BUNDLE}\n[a, b]: 2\n", r"is not valid YAML|is not a setting name"),
    ],
    ids=[
        "unclosed-list",
        "tab",
        "undefined-alias",
        "bad-indent",
        "not-utf8",
        "list",
        "scalar",
        "number",
        "int-key",
        "null-key",
        "list-key",
    ],
)
def test_broken_yaml_file_is_named(tmp_path: Path, text: str | bytes, needle: str) -> None:
    """A file that is not UTF-8 YAML holding a mapping of names is refused, naming the file."""
    path = write(tmp_path, text)
    message = refusal(path, bundle=BUNDLE)
    assert message.startswith(f"config file {path}"), message
    assert re.search(needle, message), message


def test_python_tags_in_yaml_are_refused_not_run(tmp_path: Path) -> None:
    """An object-constructing tag is a YAML error (safe loading), and nothing runs."""
    marker = tmp_path / "ran"
    path = write(tmp_path, f"bundle: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "could not determine a constructor" in refusal(path)
    assert not marker.exists()


def test_config_file_that_is_missing_or_a_directory(tmp_path: Path) -> None:
    """The path itself is checked first, and the message says which problem it has."""
    assert refusal(tmp_path / "nope.yaml", bundle=BUNDLE).endswith("does not exist")
    assert refusal(tmp_path, bundle=BUNDLE).endswith("is not a file")


def test_empty_yaml_file_sets_nothing(tmp_path: Path) -> None:
    """An empty file is a valid, empty configuration (the flags still apply)."""
    assert load_settings(write(tmp_path, ""), bundle=BUNDLE, port=7).port == 7


# -- the property --------------------------------------------------------------------------

hostile = st.one_of(
    st.sampled_from(["", "abc", "-1", "0", "1e999", "nan", "true", "[1]", "{}", "x" * 300]),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=12),
)


@examples(150)
@given(
    key=st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12)),
    value=hostile,
    source=st.sampled_from(["flag", "env", "yaml"]),
)
def test_any_bad_value_from_any_source_names_its_key(
    tmp_path: Path, key: str, value: Any, source: str
) -> None:
    """Every setting, hostile values from each source: ConfigError naming the key (and the
    variable or file), or valid settings; never another exception."""
    if key == "bundle" or (source == "env" and not key.isidentifier()):
        return
    path = tmp_path / "fuzz.yaml"
    with pytest.MonkeyPatch.context() as mp:
        if source == "flag":
            flags = {"bundle": BUNDLE, key: value}
            config = None
        elif source == "env":
            text = yaml.safe_dump(value).removesuffix("\n...\n").strip()
            if "\x00" in text:
                return
            mp.setenv(f"SILENTWATCH_{key.upper()}", text)
            flags, config = {"bundle": BUNDLE}, None
        else:
            path.write_text(yaml.safe_dump({"bundle": BUNDLE, key: value}))
            flags, config = {}, path
        try:
            load_settings(config, **flags)
        except ConfigError as exc:
            message = str(exc)
            assert re.search(rf"(^|[ ;]){re.escape(key)}[:.]", message), message
            if source == "env":
                assert f"SILENTWATCH_{key.upper()}" in message, message
            elif source == "yaml":
                assert str(path) in message, message


def test_a_yaml_value_may_name_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``${NAME}`` in a YAML string is that environment variable; an unset one is refused
    naming the key and the variable (audit and gate configs share the reader)."""
    from offline.audit.config import load_audit_config

    monkeypatch.setenv("SW_TEST_STATE", str(tmp_path / "state"))
    s = load_settings(write(tmp_path, f"bundle: {BUNDLE}\nstate_dir: ${{SW_TEST_STATE}}/a\n"))
    assert s.state_dir == tmp_path / "state" / "a"
    monkeypatch.delenv("SW_TEST_STATE")
    message = refusal(write(tmp_path, f"bundle: {BUNDLE}\nstate_dir: ${{SW_TEST_STATE}}/a\n"))
    assert "state_dir names ${SW_TEST_STATE}, which is not set" in message, message
    audit = write(tmp_path, "data:\n  pairs:\n    path: ${SW_TEST_DATA}/p.json\n", "audit.yaml")
    with pytest.raises(ValueError, match=r"data\.pairs\.path names \$\{SW_TEST_DATA\}"):
        load_audit_config(audit)
