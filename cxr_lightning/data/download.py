"""Download the NIH ChestX-ray14 images: 12 archives, resumable, verified, safely extracted.

The release
-----------
NIH ChestX-ray14 (Wang et al., "ChestX-ray8", CVPR 2017) is 112,120 frontal chest radiographs
of 30,805 patients, stored as 1024x1024 PNGs.  The NIH Clinical Center publishes it at
https://nihcc.app.box.com/v/ChestXray-NIHCC as 12 ``tar.gz`` archives of about 45 GB in all
(2.0 to 4.2 GB each); every archive holds ``images/NNNNNNNN_NNN.png`` members, so extracting all
12 into one directory gives ``ROOT/images/00000001_000.png`` ... ``ROOT/images/00030805_000.png``.
The labels (``Data_Entry_2017_v2020.csv``) and the official split lists already ship with this
package (``cxr_lightning/data/resources``); only the images have to be downloaded.

The archive URLs are the Box "shared static" links of NIH's own ``batch_download_zips.py``
(in the same Box folder).  That script saves them as ``images_01.tar.gz`` .. ``images_12.tar.gz``,
the names used here; the Box folder spells them ``images_001.tar.gz`` .. ``images_012.tar.gz``
(both spellings are accepted by ``--only`` and in ``--md5-file``).  The MD5s are those NIH
publishes in the folder's ``FAQ_CHESTXRAY.pdf`` (Q07); the byte sizes are the archives'
Content-Range totals as served by Box.

The command
-----------
::

    cxr-lightning data download --root /data/nih            # all 12 archives, ~45 GB
    cxr-lightning data download --root /data/nih --only images_01 images_02

Files go to ``ROOT/archives/NAME.part`` while downloading; an interrupted download is resumed
with an HTTP Range request when the command is run again.  Each archive is checked against the
server's length and the known size and MD5, extracted into ``ROOT`` (path-traversal and escaping
links are refused), marked done with ``ROOT/archives/NAME.done`` and then deleted (unless
``--keep-archives``).  Re-running the command skips every archive that is already done, so it is
always safe to run it again after a failure.  The disk needs about 45 GB for the images plus the
size of one archive (about 4 GB) for the archive being extracted.  To keep the images on another
disk, make ``ROOT`` itself a symbolic link: a linked ``ROOT/images`` is refused, because safe
extraction does not write through links.

A mirror (``--base-url URL``) may be an ``http://`` or ``https://`` server, or a local copy of
the archives: ``--base-url file:///mnt/nih`` or just ``--base-url /mnt/nih`` (a folder holding
``images_01.tar.gz`` ...). A local archive is copied into ``ROOT/archives`` (resumed the same way)
and checked like a downloaded one; a missing file is an error naming it. Other URL schemes are
refused with an error naming the URL.

Also runnable as ``python -m cxr_lightning.data.download --root DIR ...`` (same options).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import os
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

__all__ = [
    "NIH_ARCHIVES",
    "NIH_BOX_URL",
    "Archive",
    "ArchiveResult",
    "ChecksumError",
    "DownloadError",
    "DownloadReport",
    "UnsafeArchiveError",
    "add_download_arguments",
    "mirror_base_url",
    "download_nih_images",
    "read_md5_file",
    "run_download",
    "select_archives",
]

#: Where NIH publishes the release (the archives, labels, split lists, README and FAQ).
NIH_BOX_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

#: Number of PNGs in the full release.
NIH_NUM_IMAGES = 112_120

_CHUNK = 1 << 20  # 1 MiB
#: URL schemes an archive may be fetched from (file: a local mirror folder).
URL_SCHEMES = ("http", "https", "file")
_USER_AGENT = "cxr-lightning (NIH ChestX-ray14 downloader; python-urllib)"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: its file name, URL, and (when known) its size and MD5."""

    name: str
    url: str
    size: int | None = None
    md5: str | None = None

    @property
    def stem(self) -> str:
        """``images_01.tar.gz`` -> ``images_01``."""
        for suffix in (".tar.gz", ".tgz", ".tar"):
            if self.name.endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name


_BOX = "https://nihcc.box.com/shared/static/"

#: The 12 image archives of the official release, in order (``images_01`` .. ``images_12``).
NIH_ARCHIVES: tuple[Archive, ...] = (
    Archive("images_01.tar.gz", _BOX + "vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz", 2_008_470_987, "fe8ed0a6961412fddcbb3603c11b3698"),
    Archive("images_02.tar.gz", _BOX + "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz", 3_952_623_504, "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    Archive("images_03.tar.gz", _BOX + "f1t00wrtdk94satdfb9olcolqx20z2jp.gz", 3_929_234_850, "2301d03bde4c246388bad3876965d574"),
    Archive("images_04.tar.gz", _BOX + "0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz", 3_838_903_983, "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    Archive("images_05.tar.gz", _BOX + "v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz", 3_935_496_531, "1861f3cd0ef7734df8104f2b0309023b"),
    Archive("images_06.tar.gz", _BOX + "asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz", 3_986_301_172, "456b53a8b351afd92a35bc41444c58c8"),
    Archive("images_07.tar.gz", _BOX + "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz", 4_016_328_426, "1075121ea20a137b87f290d6a4a5965e"),
    Archive("images_08.tar.gz", _BOX + "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz", 4_018_347_353, "b61f34cec3aa69f295fbb593cbd9d443"),
    Archive("images_09.tar.gz", _BOX + "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz", 4_111_327_929, "442a3caa61ae9b64e61c561294d1e183"),
    Archive("images_10.tar.gz", _BOX + "l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz", 4_181_556_296, "09ec81c4c31e32858ad8cf965c494b74"),
    Archive("images_11.tar.gz", _BOX + "hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz", 4_187_084_020, "499aefc67207a5a97692424cf5dbeed5"),
    Archive("images_12.tar.gz", _BOX + "ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz", 2_914_187_733, "dc9fda1757c2de0032b63347a7d2895c"),
)


# ----------------------------------------------------------------------------- errors


class DownloadError(RuntimeError):
    """A download could not be completed; the message says what to do."""


class ChecksumError(DownloadError):
    """A downloaded archive has the wrong size or MD5 (the bad file has been deleted)."""


class UnsafeArchiveError(DownloadError):
    """An archive holds a member that would be written outside the target directory."""


# ----------------------------------------------------------------------------- report


@dataclass
class ArchiveResult:
    """What happened to one archive.

    ``status`` is ``"downloaded"`` (fetched from byte 0), ``"resumed"`` (continued a ``.part``)
    or ``"skipped"`` (nothing fetched: already extracted, or the verified archive was on disk).
    """

    name: str
    status: str
    bytes_downloaded: int = 0
    size: int | None = None
    resumed_from: int = 0
    images_extracted: int = 0
    extracted: bool = False
    already_done: bool = False
    md5: str | None = None
    archive_path: Path | None = None

    def summary(self) -> str:
        if self.already_done:
            return f"{self.name}: skipped (already extracted earlier: {self.images_extracted} images)"
        if self.status == "skipped":
            what = f"skipped download (verified archive already on disk, {_human(self.size)})"
        elif self.status == "resumed":
            what = (
                f"resumed at {_human(self.resumed_from)}, downloaded {_human(self.bytes_downloaded)}"
                f" ({self.bytes_downloaded} bytes) of {_human(self.size)}"
            )
        else:
            what = f"downloaded {_human(self.bytes_downloaded)} ({self.bytes_downloaded} bytes)"
        if self.extracted:
            what += f", extracted {self.images_extracted} images"
        elif self.archive_path is not None:
            what += f", not extracted (archive kept at {self.archive_path})"
        return f"{self.name}: {what}"


@dataclass
class DownloadReport:
    """The outcome of :func:`download_nih_images`: one result per archive, and the PNG count."""

    root: Path
    results: list[ArchiveResult] = field(default_factory=list)
    images_total: int = 0

    @property
    def bytes_downloaded(self) -> int:
        return sum(r.bytes_downloaded for r in self.results)

    def __getitem__(self, name: str) -> ArchiveResult:
        for result in self.results:
            if result.name == name or _archive_key(result.name) == _archive_key(name):
                return result
        raise KeyError(name)

    def summary_lines(self) -> list[str]:
        lines = [r.summary() for r in self.results]
        lines.append(f"{self.images_total} PNG files in {self.root / 'images'}")
        return lines


# ----------------------------------------------------------------------------- helpers


def _human(n: int | None) -> str:
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


_KEY_RE = re.compile(r"^(?:images_)?0*(\d+)(?:\.tar\.gz|\.tgz)?$")


def _archive_key(name: str) -> str:
    """A spelling-independent key: ``images_01``, ``images_001.tar.gz`` and ``1`` -> ``"1"``."""
    base = os.path.basename(name.strip())
    match = _KEY_RE.match(base)
    return match.group(1) if match else base


def _md5_of_file(path: Path, digest: hashlib._Hash | None = None) -> hashlib._Hash:
    digest = digest if digest is not None else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest


def _unlink(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def count_pngs(root: str | Path) -> int:
    """Number of ``*.png`` files in ``root/images``."""
    images = Path(root) / "images"
    if not images.is_dir():
        return 0
    return sum(1 for _ in images.glob("*.png"))


def select_archives(
    only: Iterable[str] | None = None,
    *,
    base_url: str | None = None,
    md5s: dict[str, str] | None = None,
    archives: Sequence[Archive] = NIH_ARCHIVES,
) -> list[Archive]:
    """Pick archives by name, point them at a mirror, and/or replace their checksums.

    ``only`` accepts ``images_01``, ``images_01.tar.gz``, ``images_001`` or ``1``.  With
    ``base_url`` every URL becomes ``{base_url}/{name}``.  ``md5s`` (name -> md5, any spelling)
    replaces the built-in checksum of the archives it names; their built-in size is dropped too,
    because a user-supplied checksum describes a file whose size we do not know.
    """
    chosen = list(archives)
    if only:
        by_key = {_archive_key(a.name): a for a in archives}
        by_key.update({a.name: a for a in archives})
        by_key.update({a.stem: a for a in archives})
        picked: list[Archive] = []
        unknown = []
        for wanted in only:
            archive = by_key.get(wanted) or by_key.get(_archive_key(wanted))
            if archive is None:
                unknown.append(wanted)
            elif archive not in picked:
                picked.append(archive)
        if unknown:
            valid = " ".join(a.stem for a in archives)
            raise ValueError(f"unknown archive name(s) {' '.join(unknown)}; choose from: {valid}")
        chosen = [a for a in archives if a in picked]  # keep the release order
    if base_url:
        base = mirror_base_url(base_url)
        chosen = [replace(a, url=f"{base}/{urllib.parse.quote(a.name)}") for a in chosen]
    if md5s:
        by_key = {_archive_key(k): v for k, v in md5s.items()}
        chosen = [
            replace(a, md5=by_key[_archive_key(a.name)], size=None) if _archive_key(a.name) in by_key else a for a in chosen
        ]
    return chosen


def mirror_base_url(base_url: str) -> str:
    """``--base-url`` as a URL without the trailing ``/``: a local folder path becomes ``file://``; other schemes are refused."""
    scheme = urllib.parse.urlparse(base_url).scheme.lower()
    if not scheme:  # a plain path: a local mirror folder
        folder = Path(base_url).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--base-url {base_url}: no such folder (a local mirror is a folder holding images_01.tar.gz ...)")
        return folder.resolve().as_uri()
    if scheme not in URL_SCHEMES:
        raise ValueError(f"--base-url {base_url}: unsupported URL scheme {scheme!r}; use http://, https://, file:// or a local folder")
    if scheme == "file":
        _local_file(base_url)  # a host part is refused here, before anything is fetched
    return base_url.rstrip("/")


def _local_file(url: str) -> Path:
    """The local path of a ``file:`` URL (``file:///mnt/nih/x`` or ``file://localhost/...``)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{url}: a file:// URL must name a local path (file:///path), not the host {parsed.netloc!r}")
    return Path(urllib.request.url2pathname(parsed.path))


_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(.+?)\s*$")
_MD5_BSD_LINE = re.compile(r"^MD5\s*\((.+)\)\s*=\s*([0-9a-fA-F]{32})\s*$")


def read_md5_file(path: str | Path) -> dict[str, str]:
    """Parse ``md5sum`` output (``<md5>  <name>`` lines; BSD ``MD5 (name) = md5`` also works).

    Blank lines and ``#`` comments are ignored.  Returns ``{file name: lower-case md5}``.
    """
    result: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _MD5_LINE.match(line)
        if match:
            md5, name = match.group(1), match.group(2)
        else:
            match = _MD5_BSD_LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{lineno}: expected '<32 hex md5>  <file name>', got {raw!r}")
            name, md5 = match.group(1), match.group(2)
        result[os.path.basename(name)] = md5.lower()
    return result


# ----------------------------------------------------------------------------- download


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
        "Check the URL (or --base-url); re-run the command later if the server is unavailable."
    )


def _expect_size(archive: Archive, total: int | None, part: Path, what: str) -> None:
    if archive.size is not None and total is not None and total != archive.size:
        _unlink(part)
        raise ChecksumError(
            f"size mismatch for {archive.name}: expected {archive.size} bytes, but {what} "
            f"{total} bytes ({archive.url}). The partial file was deleted; if the release changed, "
            "pass its checksums with --md5-file."
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
    """:func:`_fetch` for a ``file:`` URL: copy the mirror's file into ``part``, resuming a shorter ``part``."""
    source = _local_file(archive.url)
    if not source.is_file():
        what = "is a folder, not a file" if source.is_dir() else "does not exist"
        raise DownloadError(f"local mirror file {source} ({archive.url}) {what}; check --base-url (the folder holding {archive.name})")
    total = source.stat().st_size
    _expect_size(archive, total, part, "the local mirror file has")
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:  # not a prefix of this file: start again
        _unlink(part)
        offset = 0
    digest = _md5_of_file(part) if offset else hashlib.md5()
    fetched = 0
    bar = _progress_bar(archive, total, offset, progress)
    try:
        with open(source, "rb") as src, open(part, "ab" if offset else "wb") as out:
            src.seek(offset)
            while chunk := src.read(_CHUNK):
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


def _fetch(archive: Archive, part: Path, *, timeout: float, progress: bool) -> tuple[int, int, hashlib._Hash]:
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
        raise DownloadError(f"cannot download {archive.name} from {archive.url}: unsupported URL scheme; use http://, https:// or file://")
    for _attempt in range(2):  # the second attempt only after a server answered an unusable range
        offset = part.stat().st_size if part.exists() else 0
        if archive.size is not None and offset >= archive.size:
            # Everything is already here (or too much: the size check after this reports it).
            return offset, 0, _md5_of_file(part)
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
                    return offset, 0, _md5_of_file(part)
                _unlink(part)
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
                    _unlink(part)  # the server answered another range than asked: start over
                    continue
                if total is None and length is not None:
                    total = offset + length
                mode, digest = "ab", _md5_of_file(part)
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
                            chunk = response.read(_CHUNK)
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
            _unlink(part)
            raise ChecksumError(
                f"size mismatch for {archive.name}: the server announced {total} bytes but sent {have}; "
                "the bad file was deleted, re-run the command to download it again."
            )
        return offset, fetched, digest
    raise DownloadError(
        f"the server for {archive.name} ({archive.url}) did not honour a byte-range request; "
        "re-run the command to download it from the start."
    )


def _verify(archive: Archive, path: Path, md5: str | None = None) -> str:
    """Check ``path`` against ``archive.size``/``archive.md5``; delete it and raise if it differs."""
    actual_size = path.stat().st_size
    if archive.size is not None and actual_size != archive.size:
        _unlink(path)
        raise ChecksumError(
            f"size mismatch for {archive.name}: expected {archive.size} bytes, got {actual_size} bytes. "
            f"The bad file {path} was deleted; re-run the command to download it again."
        )
    actual_md5 = md5 or _md5_of_file(path).hexdigest()
    if archive.md5 is not None and actual_md5.lower() != archive.md5.lower():
        _unlink(path)
        raise ChecksumError(
            f"MD5 mismatch for {archive.name}: expected {archive.md5.lower()}, got {actual_md5}. "
            f"The bad file {path} was deleted; re-run the command to download it again."
        )
    return actual_md5


# ----------------------------------------------------------------------------- extraction


_FILTER_ERRORS: tuple[type[BaseException], ...] = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_member(archive_name: str, member: tarfile.TarInfo, root: Path) -> None:
    name = member.name

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {archive_name}: member {name!r} {why}")

    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise refuse("has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise refuse("contains '..'")
    target = (root / name).resolve()
    if not _within(target, root):
        raise refuse("would be written outside the target directory")
    if member.issym():
        link = member.linkname
        if os.path.isabs(link) or not _within((target.parent / link).resolve(), root):
            raise refuse(f"is a symlink to {link!r}, outside the target directory")
    elif member.islnk():
        if os.path.isabs(member.linkname) or not _within((root / member.linkname).resolve(), root):
            raise refuse(f"is a hard link to {member.linkname!r}, outside the target directory")
    elif not (member.isfile() or member.isdir()):
        raise refuse("is a device, FIFO or other special file")


def _extract(archive_name: str, path: Path, root: Path) -> int:
    """Safely extract ``path`` into ``root``; return the number of PNG files it held."""
    root = root.resolve()
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()  # all members are checked before anything is written
            for member in members:
                _check_member(archive_name, member, root)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; the members were checked above
                tar.extractall(root, members=members)
    except _FILTER_ERRORS as exc:  # the data filter's own refusal (after our checks: unlikely)
        raise UnsafeArchiveError(f"refusing to extract {archive_name}: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        _unlink(path)
        raise DownloadError(
            f"{archive_name} is not a readable tar.gz archive ({exc}); the bad file {path} was deleted, "
            "re-run the command to download it again."
        ) from exc
    except OSError as exc:  # disk full, permissions, ...
        raise DownloadError(
            f"could not extract {archive_name} into {root}: {exc}. Fix the problem and re-run the command; "
            f"the downloaded archive stays in {path.parent}."
        ) from exc
    return sum(1 for m in members if m.isfile() and m.name.lower().endswith(".png"))


# ----------------------------------------------------------------------------- main entry


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
    """Download, verify and (by default) extract ``archives`` into ``root``; see the module doc.

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
            result.md5 = _verify(archive, final)
        else:
            resumed_from, fetched, digest = _fetch(archive, part, timeout=timeout, progress=progress)
            result.status = "resumed" if resumed_from else "downloaded"
            result.resumed_from = resumed_from
            result.bytes_downloaded = fetched
            result.md5 = _verify(archive, part, digest.hexdigest())
            os.replace(part, final)
        result.size = final.stat().st_size
        result.archive_path = final

        if extract:
            result.images_extracted = _extract(archive.name, final, root)
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
                _unlink(final)
                result.archive_path = None
        report.results.append(result)

    report.images_total = count_pngs(root)
    return report


# ----------------------------------------------------------------------------- CLI


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cxr-lightning data download`` to ``parser``."""
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        metavar="DIR",
        help="dataset directory; images go to DIR/images, archives to DIR/archives (about 45 GB in all)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="download only these archives (images_01 .. images_12; images_001 and 1 also work)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="fetch every archive from URL/NAME (e.g. URL/images_01.tar.gz) instead of NIH's Box: a mirror "
        "(http://, https://, file:// or a local folder)",
    )
    parser.add_argument(
        "--md5-file",
        type=Path,
        metavar="FILE",
        help="checksums to verify against instead of the built-in ones (md5sum format: '<md5>  <name>' "
        "lines); the built-in size of the archives it names is not checked either",
    )
    parser.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep DIR/archives/*.tar.gz after extracting them (they are deleted by default)",
    )
    parser.add_argument(
        "--no-extract",
        action="store_true",
        help="only download and verify the archives; a later run without this flag extracts them",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="network timeout for connecting and for each read (default: 60)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run_download(args: argparse.Namespace) -> int:
    """Run ``cxr-lightning data download``: 0 on success, 1 on a download failure, 2 on bad options."""
    try:
        md5s = read_md5_file(args.md5_file) if getattr(args, "md5_file", None) else None
        archives = select_archives(getattr(args, "only", None), base_url=getattr(args, "base_url", None), md5s=md5s)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    root = Path(args.root)
    needed = sum(a.size for a in archives if a.size is not None)
    if needed:
        print(
            f"Downloading {len(archives)} NIH ChestX-ray14 archive(s) ({_human(needed)}) into {root}",
            file=sys.stderr,
        )
    try:
        report = download_nih_images(
            root,
            archives,
            extract=not getattr(args, "no_extract", False),
            keep_archives=getattr(args, "keep_archives", False),
            timeout=getattr(args, "timeout", 60.0),
            progress=not getattr(args, "no_progress", False),
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: partial downloads are kept in {root / 'archives'}; re-run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # disk full, permissions, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1

    for line in report.summary_lines():
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxr_lightning.data.download --root DIR ...`` (same options as the subcommand)."""
    parser = argparse.ArgumentParser(
        prog="python -m cxr_lightning.data.download",
        description="Download and extract the NIH ChestX-ray14 images.",
    )
    add_download_arguments(parser)
    return run_download(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
