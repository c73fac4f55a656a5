"""Bearer-token authentication for the admin RPCs.

The token lives in a file (``admin_token_file``), never on the command line or in the
environment, where ``ps`` and ``/proc/<pid>/environ`` would show it. A caller sends gRPC
metadata ``authorization: Bearer <token>``. The comparison is constant-time
(:func:`hmac.compare_digest` on bytes) and the token appears in no log record, exception
message or ``repr``.
"""

from __future__ import annotations

import hmac
import logging
from typing import NoReturn, Protocol

import grpc

from silentwatch.monitor.config import ConfigError, ServeSettings
from silentwatch.monitor.serving.errors import RequestError
from silentwatch.monitor.serving.secretfile import read_setting_file

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
DISABLED_MESSAGE = (
    "admin RPCs are off; start with --admin-enabled and --admin-token-file "
    "(silentwatch serve --admin-enabled true --admin-token-file FILE)"
)
MISSING_MESSAGE = (
    "admin RPCs need gRPC metadata 'authorization: Bearer <token>' with the token from the "
    "server's admin_token_file"
)
MALFORMED_MESSAGE = "the authorization metadata must be exactly one 'Bearer <token>'"
WRONG_MESSAGE = "the admin token is wrong"


class MetadataContext(Protocol):
    """What :meth:`AdminAuth.check` needs of a ``grpc.ServicerContext``."""

    def invocation_metadata(self) -> object: ...


def _validated(token: bytes) -> bytes:
    # gRPC metadata values must be printable ASCII: a token outside it could never be sent.
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ConfigError(
            "admin_token_file: the token must be printable ASCII without spaces (gRPC metadata "
            "cannot carry anything else); generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        # The length itself is not reported: a short secret is still a secret.
        raise ConfigError(
            f"admin_token_file: the token is empty or shorter than {MIN_TOKEN_LENGTH} "
            "characters; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token


class AdminAuth:
    """Checks the admin bearer token of one call.

    Parameters
    ----------
    token
        The expected token (bytes, >= 16 printable ASCII characters), or ``None``: admin
        RPCs are off and every :meth:`check` refuses with ``PERMISSION_DENIED``.

    Raises
    ------
    ConfigError
        The token is too short or not printable ASCII (the message names
        ``admin_token_file``, never the token).

    Examples
    --------
    >>> auth = AdminAuth(b"0123456789abcdef-example")
    >>> auth
    AdminAuth(enabled=True, token=<hidden>)
    >>> AdminAuth(None).enabled
    False
    """

    __slots__ = ("_token",)

    def __init__(self, token: bytes | None) -> None:
        self._token = None if token is None else _validated(token)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> AdminAuth:
        """The checker the settings ask for; reads ``admin_token_file`` when admin is on.

        Raises
        ------
        ConfigError
            ``admin_enabled`` without ``admin_token_file``, an unreadable file, or a bad token.
        """
        if not settings.admin_enabled:
            if settings.admin_token_file is not None:
                log.info(
                    "admin_token_file is set but admin_enabled is false: admin RPCs are off",
                    extra={"event": "admin_off"},
                )
            return cls(None)
        if settings.admin_token_file is None:
            raise ConfigError(
                "admin_enabled is true but admin_token_file is not set: put a token of at "
                f"least {MIN_TOKEN_LENGTH} characters in a file (chmod 600) and pass "
                "--admin-token-file FILE"
            )
        data = read_setting_file(settings.admin_token_file, "admin_token_file", secret=True)
        auth = cls(data.strip())
        log.info("admin RPCs on (bearer token from admin_token_file)", extra={"event": "admin_on"})
        return auth

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:
        return f"AdminAuth(enabled={self.enabled}, token=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> object:
        # Pickling would write the token into whatever stores the pickle.
        raise TypeError("AdminAuth holds a secret and cannot be pickled")

    def check(self, context: grpc.ServicerContext | MetadataContext) -> None:
        """Allow the call, or raise :class:`RequestError`.

        Raises
        ------
        RequestError
            ``PERMISSION_DENIED`` when admin RPCs are off or the token is wrong;
            ``UNAUTHENTICATED`` when the ``authorization`` metadata is missing or not
            exactly one ``Bearer <token>``.
        """
        if self._token is None:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, DISABLED_MESSAGE)
        values = [
            value
            for key, value in (context.invocation_metadata() or ())  # type: ignore[attr-defined]
            if str(key).lower() == "authorization"
        ]
        if not values:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, MISSING_MESSAGE)
        if len(values) > 1:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, MALFORMED_MESSAGE)
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        scheme, _, presented = str(value).strip().partition(" ")
        presented = presented.strip()
        # RFC 6750: the scheme name is case-insensitive.
        if scheme.lower() != "bearer" or not presented:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, MALFORMED_MESSAGE)
        # Constant time in the token's content; a length difference is all it can reveal.
        if not hmac.compare_digest(presented.encode("utf-8"), self._token):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, WRONG_MESSAGE)

    @staticmethod
    def _refuse(context: object, code: grpc.StatusCode, message: str) -> NoReturn:
        peer_fn = getattr(context, "peer", None)
        peer = peer_fn() if callable(peer_fn) else "unknown"
        # The reason is one of the fixed messages above: neither token ever reaches a log.
        # A call while admin is off is a misdirected client, not an attack: INFO.
        log.log(
            logging.INFO if message == DISABLED_MESSAGE else logging.WARNING,
            "admin call refused (%s): %s",
            code.name,
            message,
            extra={"event": "admin_auth_refused", "code": code.name, "peer": peer},
        )
        raise RequestError(code, message)
