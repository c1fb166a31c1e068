"""Where archives may come from: the ``--base_url`` mirror check and ``file:`` URLs as local paths."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

#: URL schemes an archive may be fetched from (file: a local mirror folder).
URL_SCHEMES = ("http", "https", "file")


def mirror_base_url(base_url: str) -> str:
    """``--base_url`` as a URL without the trailing ``/``: a local folder path becomes ``file://``; other schemes are refused."""
    scheme = urllib.parse.urlparse(base_url).scheme.lower()
    if not scheme:  # a plain path: a local mirror folder
        folder = Path(base_url).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--base_url {base_url}: no such folder (a local mirror is a folder holding images_01.tar.gz ...)")
        return folder.resolve().as_uri()
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"--base_url {base_url}: unsupported URL scheme {scheme!r}; use http://, https://, file:// or a local folder"
        )
    if scheme == "file":
        local_file(base_url)  # a host part is refused here, before anything is fetched
    return base_url.rstrip("/")


def local_file(url: str) -> Path:
    """The local path of a ``file:`` URL (``file:///mnt/nih/x`` or ``file://localhost/...``)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{url}: a file:// URL must name a local path (file:///path), not the host {parsed.netloc!r}")
    return Path(urllib.request.url2pathname(parsed.path))
