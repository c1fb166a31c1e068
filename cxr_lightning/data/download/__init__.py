"""Download the NIH ChestX-ray14 images: 12 archives, resumable, verified, safely extracted.

``archives`` is the release (names, URLs, sizes, MD5s) and choosing among it; ``urls`` the
mirror check; ``fetch`` HTTP(S)/local-mirror fetching with resume; ``checksums`` the size/MD5
check; ``extract`` safe extraction; ``pipeline`` runs them per archive; ``report`` says what
happened; ``command`` is ``cxr-lightning data download``.  The labels and split lists ship with
the package (``cxr_lightning/data/resources``): only the images are downloaded.
"""

from cxr_lightning.data.download.archives import NIH_ARCHIVES, NIH_BOX_URL, Archive, read_md5_file, select_archives
from cxr_lightning.data.download.command import add_download_arguments, run_download
from cxr_lightning.data.download.errors import ChecksumError, DownloadError, UnsafeArchiveError
from cxr_lightning.data.download.pipeline import download_nih_images
from cxr_lightning.data.download.report import ArchiveResult, DownloadReport
from cxr_lightning.data.download.urls import mirror_base_url

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
