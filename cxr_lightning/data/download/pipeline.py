"""Download, verify and extract a list of archives into ``ROOT``, skipping what an earlier run finished.

Each archive goes ``ROOT/archives/NAME.part`` (fetched, resumable) -> ``NAME`` (size and MD5
verified) -> extracted into ``ROOT`` -> ``NAME.done`` (a JSON marker) -> deleted unless
``keep_archives``.  Re-running skips every archive with a marker, so it is always safe to run
again after a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.data.download.archives import NIH_ARCHIVES, Archive, count_pngs
from cxr_lightning.data.download.checksums import verify_archive
from cxr_lightning.data.download.errors import DownloadError
from cxr_lightning.data.download.extract import extract_archive
from cxr_lightning.data.download.fetch import fetch
from cxr_lightning.data.download.report import ArchiveResult, DownloadReport


def _read_marker(marker: Path) -> dict:
    try:
        data = json.loads(marker.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def download_nih_images(
    root: str | Path,
    archives: Sequence[Archive] = NIH_ARCHIVES,
    *,
    extract: bool = True,
    keep_archives: bool = False,
    timeout: float = 60,
    progress: bool = True,
) -> DownloadReport:
    """Download, verify and (by default) extract ``archives`` into ``root``; see :mod:`cxr_lightning.data.download`.

    Archives already marked done (``root/archives/NAME.done``) are skipped; a verified archive
    left in ``root/archives`` is not fetched again; a ``NAME.part`` is resumed.  Stops at the
    first failing archive with a :class:`DownloadError` (or its subclasses
    :class:`ChecksumError` / :class:`UnsafeArchiveError`); the archives finished before it stay
    finished, so re-running continues from there.
    """
    root = Path(root)
    if extract and (root / "images").is_symlink():
        raise DownloadError(
            f"{root / 'images'} is a symbolic link, and safe extraction does not write through links. "
            f"To keep the images on another disk, make {root} itself the link (or a directory there)."
        )
    archive_dir = root / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(root=root)

    for archive in archives:
        final = archive_dir / archive.name
        part = archive_dir / f"{archive.name}.part"
        marker = archive_dir / f"{archive.name}.done"

        if marker.exists():
            info = _read_marker(marker)
            report.results.append(
                ArchiveResult(
                    name=archive.name,
                    status="skipped",
                    size=info.get("size"),
                    images_extracted=int(info.get("images", 0)),
                    extracted=True,
                    already_done=True,
                    md5=info.get("md5"),
                    archive_path=final if final.exists() else None,
                )
            )
            continue

        result = ArchiveResult(name=archive.name, status="skipped")
        if final.exists():
            result.md5 = verify_archive(archive, final)
        else:
            resumed_from, fetched, digest = fetch(archive, part, timeout=timeout, progress=progress)
            result.status = "resumed" if resumed_from else "downloaded"
            result.resumed_from = resumed_from
            result.bytes_downloaded = fetched
            result.md5 = verify_archive(archive, part, digest.hexdigest())
            os.replace(part, final)
        result.size = final.stat().st_size
        result.archive_path = final

        if extract:
            result.images_extracted = extract_archive(archive.name, final, root)
            result.extracted = True
            marker.write_text(
                json.dumps(
                    {
                        "archive": archive.name,
                        "url": archive.url,
                        "size": result.size,
                        "md5": result.md5,
                        "images": result.images_extracted,
                    },
                    indent=1,
                )
                + "\n"
            )
            if not keep_archives:
                final.unlink(missing_ok=True)
                result.archive_path = None
        report.results.append(result)

    report.images_total = count_pngs(root)
    return report
