"""The ``cxr-lightning`` command: :func:`main` dispatches to the LightningCLI (``fit``...) and the other commands."""

from cxr_lightning.cli.main import main

__all__ = ["main"]
