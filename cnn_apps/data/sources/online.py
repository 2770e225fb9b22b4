"""Whether TFDS can download: the check the TFDS-backed sources make before they try."""

from __future__ import annotations

import os
import socket

_TFDS_HOST = ("storage.googleapis.com", 443)  # where TFDS downloads from


def is_online(timeout: float = 3.0) -> bool:
    """True when TFDS' download host answers within ``timeout`` seconds.

    ``CNN_APPS_OFFLINE=1`` answers False at once (tests and air-gapped machines).
    """
    if os.environ.get("CNN_APPS_OFFLINE", "") not in ("", "0"):
        return False
    try:
        socket.create_connection(_TFDS_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False
