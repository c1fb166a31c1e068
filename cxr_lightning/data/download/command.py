"""``cxr-lightning data download`` (and ``python -m cxr_lightning.data.download``): options, run, exit status.

::

    cxr-lightning data download --data_root /data/nih            # all 12 archives, ~45 GB
    cxr-lightning data download --data_root /data/nih --only images_01 images_02

Files go to ``ROOT/archives/NAME.part`` while downloading; an interrupted download is resumed
with an HTTP Range request when the command is run again.  Each archive is checked against the
server's length and the known size and MD5, extracted into ``ROOT`` (path-traversal and escaping
links are refused), marked done with ``ROOT/archives/NAME.done`` and then deleted (unless
``--keep_archives``).  Re-running the command skips every archive that is already done, so it is
always safe to run it again after a failure.  The disk needs about 45 GB for the images plus the
size of one archive (about 4 GB) for the archive being extracted.  To keep the images on another
disk, make ``ROOT`` itself a symbolic link: a linked ``ROOT/images`` is refused, because safe
extraction does not write through links.

A mirror (``--base_url URL``) may be an ``http://`` or ``https://`` server, or a local copy of
the archives: ``--base_url file:///mnt/nih`` or just ``--base_url /mnt/nih`` (a folder holding
``images_01.tar.gz`` ...). A local archive is copied into ``ROOT/archives`` (resumed the same way)
and checked like a downloaded one; a missing file is an error naming it. Other URL schemes are
refused with an error naming the URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.download.archives import read_md5_file, select_archives
from cxr_lightning.data.download.errors import DownloadError
from cxr_lightning.data.download.pipeline import download_nih_images
from cxr_lightning.data.download.report import human_size


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cxr-lightning data download`` to ``parser``."""
    parser.add_argument(
        "--data_root",
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
        "--base_url",
        metavar="URL",
        help="fetch every archive from URL/NAME (e.g. URL/images_01.tar.gz) instead of NIH's Box: a mirror "
        "(http://, https://, file:// or a local folder)",
    )
    parser.add_argument(
        "--md5_file",
        type=Path,
        metavar="FILE",
        help="checksums to verify against instead of the built-in ones (md5sum format: '<md5>  <name>' "
        "lines); the built-in size of the archives it names is not checked either",
    )
    parser.add_argument(
        "--keep_archives",
        action="store_true",
        help="keep DIR/archives/*.tar.gz after extracting them (they are deleted by default)",
    )
    parser.add_argument(
        "--no_extract",
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
    parser.add_argument("--no_progress", action="store_true", help="do not show progress bars")


def run_download(args: argparse.Namespace) -> int:
    """Run ``cxr-lightning data download``: 0 on success, 1 on a download failure, 2 on bad options."""
    try:
        md5s = read_md5_file(args.md5_file) if getattr(args, "md5_file", None) else None
        archives = select_archives(getattr(args, "only", None), base_url=getattr(args, "base_url", None), md5s=md5s)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    root = Path(args.data_root)
    needed = sum(a.size for a in archives if a.size is not None)
    if needed:
        print(
            f"Downloading {len(archives)} NIH ChestX-ray14 archive(s) ({human_size(needed)}) into {root}",
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
    """``python -m cxr_lightning.data.download --data_root DIR ...`` (same options as the subcommand)."""
    parser = CommandParser(
        prog="python -m cxr_lightning.data.download",
        description="Download and extract the NIH ChestX-ray14 images.",
    )
    add_download_arguments(parser)
    return run_download(parser.parse_args(argv))
