"""Fetching one archive into ``NAME.part``: HTTP(S) with Range resume, or a copy from a local mirror.

An interrupted download is resumed with an HTTP Range request (a shorter local ``.part`` is
continued the same way from a ``file:`` mirror); the MD5 is computed while the bytes arrive, so
a fresh download is read only once.  Network and HTTP failures keep the ``.part`` for resuming; a
length that contradicts the archive's known size deletes it.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cxr_lightning.data.download.archives import Archive
from cxr_lightning.data.download.checksums import CHUNK, md5_of_file
from cxr_lightning.data.download.errors import ChecksumError, DownloadError
from cxr_lightning.data.download.urls import local_file

_USER_AGENT = "cxr-lightning (NIH ChestX-ray14 downloader; python-urllib)"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> (100, 200); ``bytes */200`` -> (None, 200)."""
    if not value:
        return None, None
    match = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _network_error(archive: Archive, part: Path, exc: BaseException) -> DownloadError:
    have = part.stat().st_size if part.exists() else 0
    reason = getattr(exc, "reason", None) or exc
    saved = f"{have} bytes are saved in {part}; " if have else ""
    return DownloadError(
        f"network error while downloading {archive.name} from {archive.url}: {reason}. {saved}re-run the same command to resume."
    )


def _http_error(archive: Archive, exc: urllib.error.HTTPError) -> DownloadError:
    return DownloadError(
        f"HTTP {exc.code} {exc.reason} while downloading {archive.name} from {archive.url}. "
        "Check the URL (or --base_url); re-run the command later if the server is unavailable."
    )


def _expect_size(archive: Archive, total: int | None, part: Path, what: str) -> None:
    if archive.size is not None and total is not None and total != archive.size:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"size mismatch for {archive.name}: expected {archive.size} bytes, but {what} "
            f"{total} bytes ({archive.url}). The partial file was deleted; if the release changed, "
            "pass its checksums with --md5_file."
        )


def _progress_bar(archive: Archive, total: int | None, offset: int, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=offset,
        desc=archive.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # keep log files short
        leave=False,
        dynamic_ncols=True,
    )


def _copy_local(archive: Archive, part: Path, *, progress: bool) -> tuple[int, int, hashlib._Hash]:
    """:func:`fetch` for a ``file:`` URL: copy the mirror's file into ``part``, resuming a shorter ``part``."""
    source = local_file(archive.url)
    if not source.is_file():
        what = "is a folder, not a file" if source.is_dir() else "does not exist"
        raise DownloadError(
            f"local mirror file {source} ({archive.url}) {what}; check --base_url (the folder holding {archive.name})"
        )
    total = source.stat().st_size
    _expect_size(archive, total, part, "the local mirror file has")
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:  # not a prefix of this file: start again
        part.unlink(missing_ok=True)
        offset = 0
    digest = md5_of_file(part) if offset else hashlib.md5()
    fetched = 0
    bar = _progress_bar(archive, total, offset, progress)
    try:
        with open(source, "rb") as src, open(part, "ab" if offset else "wb") as out:
            src.seek(offset)
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                fetched += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) == source:
            raise DownloadError(f"cannot read local mirror file {source}: {exc.strerror or exc}") from exc
        raise  # writing the .part failed (disk full, ...): reported by run_download
    finally:
        bar.close()
    return offset, fetched, digest


def fetch(archive: Archive, part: Path, *, timeout: float, progress: bool) -> tuple[int, int, hashlib._Hash]:
    """Download ``archive`` into ``part`` (resuming it).  Returns (offset resumed from, bytes fetched, md5).

    Raises DownloadError on network/HTTP failures (the ``.part`` is kept for resuming) and
    ChecksumError when the server's length contradicts ``archive.size`` (the ``.part`` is deleted).
    A ``file:`` URL is copied from the local mirror (:func:`_copy_local`); any other scheme but
    http(s) is refused.
    """
    scheme = urllib.parse.urlparse(archive.url).scheme.lower()
    if scheme == "file":
        return _copy_local(archive, part, progress=progress)
    if scheme not in ("http", "https"):
        raise DownloadError(
            f"cannot download {archive.name} from {archive.url}: unsupported URL scheme; use http://, https:// or file://"
        )
    for _attempt in range(2):  # the second attempt only after a server answered an unusable range
        offset = part.stat().st_size if part.exists() else 0
        if archive.size is not None and offset >= archive.size:
            # Everything is already here (or too much: the size check after this reports it).
            return offset, 0, md5_of_file(part)
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(archive.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # Range not satisfiable: the .part is complete, or longer than the file.
                _, total = _content_range(exc.headers.get("Content-Range"))
                exc.close()
                if total is not None and total == offset:
                    _expect_size(archive, total, part, "the server reports")
                    return offset, 0, md5_of_file(part)
                part.unlink(missing_ok=True)
                continue
            raise _http_error(archive, exc) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _network_error(archive, part, exc) from exc

        with response:
            status = response.status
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206 and offset:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)  # the server answered another range than asked: start over
                    continue
                if total is None and length is not None:
                    total = offset + length
                mode, digest = "ab", md5_of_file(part)
            elif status == 200:
                # Fresh download, or the server ignored the Range header: restart from byte 0.
                offset, total, mode, digest = 0, length, "wb", hashlib.md5()
            else:
                raise DownloadError(
                    f"unexpected HTTP {status} while downloading {archive.name} from {archive.url}; "
                    "re-run the command to try again."
                )
            _expect_size(archive, total, part, "the server sends")

            fetched = 0
            bar = _progress_bar(archive, total, offset, progress)
            try:
                with open(part, mode) as out:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except (OSError, http.client.HTTPException) as exc:
                            out.flush()
                            raise _network_error(archive, part, exc) from exc
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        fetched += len(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()

        have = offset + fetched
        if total is not None and have < total:
            raise DownloadError(
                f"download of {archive.name} from {archive.url} stopped early: got {have} of {total} bytes "
                f"(saved in {part}); re-run the same command to resume."
            )
        if total is not None and have > total:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"size mismatch for {archive.name}: the server announced {total} bytes but sent {have}; "
                "the bad file was deleted, re-run the command to download it again."
            )
        return offset, fetched, digest
    raise DownloadError(
        f"the server for {archive.name} ({archive.url}) did not honour a byte-range request; "
        "re-run the command to download it from the start."
    )
