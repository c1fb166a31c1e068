import sys

from cxr_lightning.cli import main

sys.exit(main())
