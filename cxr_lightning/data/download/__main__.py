"""``python -m cxr_lightning.data.download --data_root DIR ...`` (same options as ``cxr-lightning data download``)."""

from cxr_lightning.data.download.command import main

raise SystemExit(main())
