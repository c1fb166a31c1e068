"""A checkpoint made the quick way for tests: one training step on a DataModule, then saved."""

from pathlib import Path

import lightning as L


def train_one_step_and_save(model: L.LightningModule, datamodule: L.LightningDataModule, path: Path) -> Path:
    """Fit ``model`` for one step (no validation, no logger) and save the full checkpoint to ``path``."""
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=path.parent)  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path, weights_only=False)
    return path
