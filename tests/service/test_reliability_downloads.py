"""A download's ETag over real HTTP: opaque (no inode, no clock of the server), yet it changes
with the file and keeps working with If-Range."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from lsq.files import CHECKPOINT

from .test_artifacts import serving


def test_a_download_etag_is_opaque_and_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    path.write_bytes(bytes(range(256)) * 64)
    with serving(tmp_path, CHECKPOINT) as url, httpx.Client() as client:
        etag = client.get(url).headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{20}"', etag), etag
        stat_ = os.stat(path)
        for shown in (f"{stat_.st_ino:x}", f"{stat_.st_mtime_ns:x}", str(stat_.st_mtime_ns)):
            assert shown not in etag
        assert client.get(url).headers["etag"] == etag  # the same file, the same tag
        part = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert (part.status_code, part.content) == (206, bytes(range(10)))

        # Rewritten in place, same size, same inode: only its mtime tells the versions apart.
        path.write_bytes(bytes(range(255, -1, -1)) * 64)
        os.utime(path, ns=(stat_.st_atime_ns, stat_.st_mtime_ns + 1))
        changed = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert (changed.status_code, changed.content[:2]) == (200, bytes([255, 254]))
        assert changed.headers["etag"] != etag
