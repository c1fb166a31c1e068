"""An archive's MD5 and the size/MD5 check that deletes a bad archive."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cxr_lightning.data.download.archives import Archive
from cxr_lightning.data.download.errors import ChecksumError

#: Bytes read (from disk or the network) and hashed at a time.
CHUNK = 1 << 20  # 1 MiB


def md5_of_file(path: Path, digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """``digest`` (a new MD5 by default) updated with the bytes of ``path``."""
    digest = digest if digest is not None else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest


def verify_archive(archive: Archive, path: Path, md5: str | None = None) -> str:
    """Check ``path`` against ``archive.size``/``archive.md5``; delete it and raise if it differs."""
    actual_size = path.stat().st_size
    if archive.size is not None and actual_size != archive.size:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"size mismatch for {archive.name}: expected {archive.size} bytes, got {actual_size} bytes. "
            f"The bad file {path} was deleted; re-run the command to download it again."
        )
    actual_md5 = md5 or md5_of_file(path).hexdigest()
    if archive.md5 is not None and actual_md5.lower() != archive.md5.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"MD5 mismatch for {archive.name}: expected {archive.md5.lower()}, got {actual_md5}. "
            f"The bad file {path} was deleted; re-run the command to download it again."
        )
    return actual_md5
