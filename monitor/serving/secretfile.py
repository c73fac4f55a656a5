"""Read a file named by a setting, turning every failure into a :class:`ConfigError`.

TLS keys, client CAs and the admin token all arrive as paths in settings. A typo there
must end start-up with one line that names the key and the path, not a traceback, and a
secret file must never be echoed (the message carries the path, never the bytes).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from silentwatch.monitor.config import ConfigError

log = logging.getLogger(__name__)


def read_setting_file(path: Path, key: str, *, secret: bool = False) -> bytes:
    """The bytes of the file that setting ``key`` points at.

    Parameters
    ----------
    path
        The file.
    key
        The setting's name (``tls_key_file``), put first in every error message.
    secret
        Warn (not fail) when the file is readable by every user on the machine: start-up
        stays possible on platforms that mount secrets 0644, but the operator is told.

    Raises
    ------
    ConfigError
        Missing, a directory, or unreadable; the message names ``key`` and what to do.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist; fix the path or unset {key}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory; point {key} at a file") from None
    except PermissionError:
        raise ConfigError(
            f"{key}: cannot read {path} (permission denied); make it readable by the user "
            "that runs silentwatch"
        ) from None
    except OSError as exc:
        # exc.strerror only: the generic text, never file content.
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None
    if secret:
        try:
            mode = path.stat().st_mode
        except OSError:  # raced away after the read: the read is what counts
            mode = 0
        if mode & stat.S_IROTH:
            log.warning(
                "%s: %s is readable by every user on this machine; chmod 600 it",
                key,
                path,
                extra={"event": "secret_file_world_readable"},
            )
    return data
