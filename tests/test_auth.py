"""The admin bearer-token check (monitor/serving/auth.py, docs/security.md)."""

from __future__ import annotations

import hmac
import logging
import pickle
from pathlib import Path

import grpc
import pytest

from silentwatch.monitor.config import ConfigError, load_settings
from silentwatch.monitor.serving import auth as auth_module
from silentwatch.monitor.serving.auth import DISABLED_MESSAGE, AdminAuth
from silentwatch.monitor.serving.errors import RequestError

TOKEN = "s3cret-admin-token-0123456789"


class FakeContext:
    """Only what AdminAuth may use: the call's metadata."""

    def __init__(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self._metadata


def bearer(token: str = TOKEN) -> FakeContext:
    return FakeContext([("user-agent", "test"), ("authorization", f"Bearer {token}")])


@pytest.fixture
def auth() -> AdminAuth:
    return AdminAuth(TOKEN.encode())


def refused(auth: AdminAuth, ctx: FakeContext) -> RequestError:
    with pytest.raises(RequestError) as e:
        auth.check(ctx)
    return e.value


def test_the_right_token_passes(auth):
    auth.check(bearer())
    # RFC 6750: the scheme is case-insensitive; surrounding spaces are not part of the token.
    auth.check(FakeContext([("authorization", f"bearer  {TOKEN} ")]))
    auth.check(FakeContext([("Authorization", f"Bearer {TOKEN}".encode())]))


def test_missing_metadata_is_unauthenticated(auth):
    err = refused(auth, FakeContext([("user-agent", "test")]))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in err.message


@pytest.mark.parametrize(
    "value",
    ["", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}"],
)
def test_malformed_metadata_is_unauthenticated(auth, value):
    err = refused(auth, FakeContext([("authorization", value)]))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


def test_two_authorization_values_are_unauthenticated(auth):
    ctx = FakeContext([("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")])
    assert refused(auth, ctx).code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("wrong", ["wrong-token-but-long-enough", TOKEN[:-1], TOKEN + "x"])
def test_a_wrong_token_is_permission_denied(auth, wrong):
    err = refused(auth, bearer(wrong))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert wrong not in err.message and TOKEN not in err.message


def test_disabled_admin_refuses_every_call():
    off = AdminAuth(None)
    assert not off.enabled
    err = refused(off, bearer())
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.message == DISABLED_MESSAGE
    assert "--admin-enabled" in err.message and "--admin-token-file" in err.message


def test_comparison_is_hmac_compare_digest_on_bytes(auth, monkeypatch):
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    auth.check(bearer())
    with pytest.raises(RequestError):
        auth.check(bearer("wrong-token-but-long-enough"))
    assert len(calls) == 2
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    assert calls[0] == (TOKEN.encode(), TOKEN.encode())


def test_token_never_in_repr_str_pickle_or_logs(auth, caplog):
    assert TOKEN not in repr(auth) and TOKEN not in str(auth)
    assert repr(auth) == "AdminAuth(enabled=True, token=<hidden>)"
    assert not hasattr(auth, "__dict__")  # vars(auth) cannot show it either
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(auth)
    caplog.set_level(logging.DEBUG)
    wrong = "an-attacker-guess-0123456789"
    for ctx in (bearer(), bearer(wrong), FakeContext([]), FakeContext([("authorization", "x")])):
        try:
            auth.check(ctx)
        except RequestError as exc:
            assert TOKEN not in str(exc) and wrong not in str(exc)
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "admin_auth_refused"]
    assert len(refusals) == 3
    assert {r.code for r in refusals} == {"PERMISSION_DENIED", "UNAUTHENTICATED"}
    for r in caplog.records:
        text = r.getMessage() + repr(r.__dict__)
        assert TOKEN not in text and wrong not in text


# -- settings ---------------------------------------------------------------------------------


def token_file(tmp_path: Path, content: str) -> Path:
    p = tmp_path / "admin.token"
    p.write_text(content)
    p.chmod(0o600)
    return p


def test_from_settings_reads_and_strips_the_token_file(bundle_dir, tmp_path):
    f = token_file(tmp_path, f"  {TOKEN}\n")
    a = AdminAuth.from_settings(
        load_settings(bundle=bundle_dir, admin_enabled=True, admin_token_file=f)
    )
    assert a.enabled
    a.check(bearer())


def test_admin_off_by_default(bundle_dir):
    a = AdminAuth.from_settings(load_settings(bundle=bundle_dir))
    assert not a.enabled


def test_enabled_without_token_file_names_the_key(bundle_dir):
    with pytest.raises(ConfigError, match=r"^admin_enabled is true but admin_token_file"):
        AdminAuth.from_settings(load_settings(bundle=bundle_dir, admin_enabled=True))


@pytest.mark.parametrize("content", ["", "\n", "short-token", "x" * 15])
def test_empty_or_short_token_names_the_key(bundle_dir, tmp_path, content):
    f = token_file(tmp_path, content)
    with pytest.raises(ConfigError, match=r"^admin_token_file: the token is empty or shorter"):
        AdminAuth.from_settings(
            load_settings(bundle=bundle_dir, admin_enabled=True, admin_token_file=f)
        )


def test_token_with_spaces_or_non_ascii_names_the_key(bundle_dir, tmp_path):
    for content in ("two words that are long", "tökén-0123456789abcdef"):
        f = token_file(tmp_path, content)
        with pytest.raises(ConfigError, match=r"^admin_token_file: the token must be printable"):
            AdminAuth.from_settings(
                load_settings(bundle=bundle_dir, admin_enabled=True, admin_token_file=f)
            )


def test_missing_token_file_names_the_key(bundle_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^admin_token_file: .* does not exist"):
        AdminAuth.from_settings(
            load_settings(bundle=bundle_dir, admin_enabled=True, admin_token_file=tmp_path / "x")
        )


def test_world_readable_token_file_warns_without_echoing_it(bundle_dir, tmp_path, caplog):
    f = token_file(tmp_path, TOKEN)
    f.chmod(0o644)
    caplog.set_level(logging.INFO)
    AdminAuth.from_settings(
        load_settings(bundle=bundle_dir, admin_enabled=True, admin_token_file=f)
    )
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_sidecar_refuses_to_start_with_admin_misconfigured(sidecar_factory):
    with pytest.raises(ConfigError, match="admin_token_file"):
        sidecar_factory(admin_enabled=True)


def test_sidecar_exposes_the_checker(sidecar_factory, tmp_path):
    sc = sidecar_factory(admin_enabled=True, admin_token_file=token_file(tmp_path, TOKEN))
    sc.admin_auth.check(bearer())
    assert refused(sc.admin_auth, bearer("wrong-token-but-long-enough")).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )
