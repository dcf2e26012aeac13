"""The names hypha-rpc's tests import from their package (``from . import WS_SERVER_URL``).

Installed as ``tests/__init__.py`` of the unpacked hypha-rpc sdist by ``compat/run.py``; the
sdist ships the tests without it. Our own harness code, not taken from hypha-rpc.
"""

import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

#: The server every test talks to: rhizomorph, started by compat/conftest.py.
WS_PORT = 3828
WS_SERVER_URL = f"http://127.0.0.1:{WS_PORT}"

#: One signing secret for every server start of a run, so tokens (reconnection tokens too)
#: stay valid across a restart, as in a deployment that sets ``jwt_secret``.
JWT_SECRET = os.environ.get("COMPAT_JWT_SECRET") or str(uuid.uuid4())

# Hypha's S3 storage runs on MinIO in Hypha's own tests. No test in this sdist uses these and
# rhizomorph has no S3 storage, so no MinIO is started: they name nothing that listens.
MINIO_PORT = 38483
MINIO_SERVER_URL = f"http://127.0.0.1:{MINIO_PORT}"
MINIO_SERVER_URL_PUBLIC = MINIO_SERVER_URL
MINIO_ROOT_USER = "minio"
MINIO_ROOT_PASSWORD = str(uuid.uuid4())


def find_item(items: Iterable[Mapping[str, Any]], key: str, value: Any) -> Mapping[str, Any] | None:
    """The first item whose ``item[key]`` equals ``value``, or ``None``."""
    for item in items:
        if item.get(key) == value:
            return item
    return None
