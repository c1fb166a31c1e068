"""What a download did: one :class:`ArchiveResult` per archive and the :class:`DownloadReport` printed at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr_lightning.data.download.archives import archive_key


def human_size(n: int | None) -> str:
    """A byte count for people: ``2008470987`` -> ``2.0 GB`` (decimal units)."""
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


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
            what = f"skipped download (verified archive already on disk, {human_size(self.size)})"
        elif self.status == "resumed":
            what = (
                f"resumed at {human_size(self.resumed_from)}, downloaded {human_size(self.bytes_downloaded)}"
                f" ({self.bytes_downloaded} bytes) of {human_size(self.size)}"
            )
        else:
            what = f"downloaded {human_size(self.bytes_downloaded)} ({self.bytes_downloaded} bytes)"
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
            if result.name == name or archive_key(result.name) == archive_key(name):
                return result
        raise KeyError(name)

    def summary_lines(self) -> list[str]:
        lines = [r.summary() for r in self.results]
        lines.append(f"{self.images_total} PNG files in {self.root / 'images'}")
        return lines
