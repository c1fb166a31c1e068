"""The NIH ChestX-ray14 release: its 12 image archives, their sizes and MD5s, and choosing among them.

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
(both spellings are accepted by ``--only`` and in ``--md5_file``).  The MD5s are those NIH
publishes in the folder's ``FAQ_CHESTXRAY.pdf`` (Q07); the byte sizes are the archives'
Content-Range totals as served by Box.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cxr_lightning.data.download.urls import mirror_base_url

#: Where NIH publishes the release (the archives, labels, split lists, README and FAQ).
NIH_BOX_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

#: Number of PNGs in the full release.
NIH_NUM_IMAGES = 112_120


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


_KEY_RE = re.compile(r"^(?:images_)?0*(\d+)(?:\.tar\.gz|\.tgz)?$")


def archive_key(name: str) -> str:
    """A spelling-independent key: ``images_01``, ``images_001.tar.gz`` and ``1`` -> ``"1"``."""
    base = os.path.basename(name.strip())
    match = _KEY_RE.match(base)
    return match.group(1) if match else base


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
        by_key = {archive_key(a.name): a for a in archives}
        by_key.update({a.name: a for a in archives})
        by_key.update({a.stem: a for a in archives})
        picked: list[Archive] = []
        unknown = []
        for wanted in only:
            archive = by_key.get(wanted) or by_key.get(archive_key(wanted))
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
        by_key = {archive_key(k): v for k, v in md5s.items()}
        chosen = [replace(a, md5=by_key[archive_key(a.name)], size=None) if archive_key(a.name) in by_key else a for a in chosen]
    return chosen


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
