"""The errors of the NIH image download; each message says what to do next."""

from __future__ import annotations


class DownloadError(RuntimeError):
    """A download could not be completed; the message says what to do."""


class ChecksumError(DownloadError):
    """A downloaded archive has the wrong size or MD5 (the bad file has been deleted)."""


class UnsafeArchiveError(DownloadError):
    """An archive holds a member that would be written outside the target directory."""
