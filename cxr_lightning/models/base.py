"""``CXRClassifier``: what every model shares (head, loss, metrics, optimiser, scheduler, logging).

A subclass only builds its image backbone (an ``nn.Module`` with ``out_features`` whose forward
maps ``(B, C, H, W)`` to ``(B, out_features)``) and calls :meth:`CXRClassifier.attach_backbone`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from cxr_lightning.data.labels import FINDINGS, LABELS, NO_FINDING
from cxr_lightning.evaluation.metrics import NO_SAMPLES_WARNING, PredictionCollector, classification_metrics, format_metrics_table
from cxr_lightning.models.fusion import MetadataFusionHead
from cxr_lightning.models.losses import build_loss

# Where the model's class path is recorded: the key LightningCLI stores it under in hyper_parameters.
CLASS_PATH_KEY = "_class_path"
# LightningCLI's record of how to build the class: read by LightningModule.load_from_checkpoint.
INSTANTIATOR_KEY, CLI_INSTANTIATOR = "_instantiator", "lightning.pytorch.cli.instantiate_module"
# Where checkpoints written before this model recorded CLASS_PATH_KEY itself keep it (top level).
LEGACY_MODEL_CLASS_KEY = "model_class_path"
RNG_STATE_KEY = "torch_rng_state"
CUDA_RNG_STATE_KEY = "torch_cuda_rng_state"
SchedulerName = Literal["none", "plateau", "warmup_linear"]


class CXRClassifier(L.LightningModule):
    """Multi-label classifier: backbone -> pooled features -> :class:`MetadataFusionHead`.

    Args:
        num_labels: number of outputs (linked from the DataModule).
        metadata_dim: width of the encoded metadata (linked from the DataModule).
        label_names: names of the outputs, in order (linked from the DataModule).
        pos_weight: per-label positive-class weights of the loss (linked from the DataModule).
        loss: ``bce`` (the paper's, with ``pos_weight``), ``focal`` (Lin et al. 2017) or
            ``asymmetric`` (Ridnik et al. 2021).
        loss_options: keyword arguments of the loss, e.g. ``{gamma: 2.0}`` for focal or
            ``{gamma_neg: 4, gamma_pos: 0, clip: 0.05}`` for asymmetric.
        metadata_hidden: widths of the metadata MLP; empty concatenates the metadata directly.
        head_dropout: dropout on the pooled image features before the head.
        lr: learning rate.
        weight_decay: weight decay (L2 for ``adam``/``sgd``, decoupled for ``adamw``).
        scheduler: ``none``; ``plateau`` (ReduceLROnPlateau on ``val/loss``, once per epoch);
            ``warmup_linear`` (linear warm-up over ``warmup_fraction`` of the steps, then linear
            decay to zero, per step).
        warmup_fraction: fraction of all training steps used for warm-up.
        plateau_factor: ReduceLROnPlateau factor.
        plateau_patience: ReduceLROnPlateau patience in epochs.
        channels_last: keep convolution weights and inputs in channels-last memory format
            (faster convolutions with mixed precision on recent GPUs).
        compile: ``torch.compile`` the backbone (the head, loss and metrics stay eager).
        optimizer: ``adam`` (the paper's), ``adamw`` or ``sgd`` (CheXNet's reproduction: momentum 0.9).
        momentum: SGD momentum (unused by Adam/AdamW).
    """

    def __init__(
        self,
        num_labels: int = len(LABELS),
        metadata_dim: int = 5,
        label_names: list[str] | None = None,
        pos_weight: list[float] | None = None,
        loss: Literal["bce", "focal", "asymmetric"] = "bce",
        loss_options: dict[str, float] | None = None,
        metadata_hidden: Sequence[int] = (),
        head_dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: SchedulerName = "none",
        warmup_fraction: float = 0.1,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        channels_last: bool = False,
        compile: bool = False,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        momentum: float = 0.9,
    ):
        super().__init__()
        if label_names is None:
            if num_labels not in (len(LABELS), len(FINDINGS)):
                raise ValueError(f"label_names are needed for {num_labels} labels (only 15 or 14 have default names)")
            label_names = list(LABELS if num_labels == len(LABELS) else FINDINGS)
        label_names = list(label_names)
        if len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label names for {num_labels} labels")
        self.save_hyperparameters()
        self.label_names = label_names
        self.criterion = build_loss(loss, num_labels, pos_weight, **(loss_options or {}))
        # Tuned on validation by ThresholdTuner; a buffer so every checkpoint carries it.
        self.register_buffer("thresholds", torch.full((num_labels,), 0.5))
        # num_labels: an epoch whose every batch was skipped still computes (0, num_labels) predictions.
        self.val_predictions = PredictionCollector(num_labels)
        self.test_predictions = PredictionCollector(num_labels)
        self.backbone: nn.Module | None = None
        self.head: MetadataFusionHead | None = None
        self.test_results: dict[str, Any] = {}
        self._skipped: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.skipped_images: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self._pending_rng_state: torch.Tensor | None = None
        self._warned: set[str] = set()  # the warnings already shown in this run
        self._pending_cuda_rng_state: torch.Tensor | None = None

    def attach_backbone(self, backbone: nn.Module) -> None:
        """Install the image backbone and a fusion head sized for it."""
        h = self.hparams
        self.backbone = backbone
        self.head = MetadataFusionHead(backbone.out_features, h.metadata_dim, h.num_labels, h.metadata_hidden, h.head_dropout)

    def _apply(self, fn, recurse: bool = True):
        # Thresholds move with the model but stay float32 under bf16-true/16-true: a threshold
        # rounded to bf16 no longer maximises F1 on validation. torch's one private method here:
        # every public cast (to, half, bfloat16, float, double, type; Lightning's precision
        # plugins call to) goes through _apply, which casts every floating-point buffer, and torch
        # has no public per-buffer opt-out. Keeping them out of the buffers instead would stop
        # .to(device) and DDP from moving them and change the checkpoints' state_dict.
        thresholds = getattr(self, "thresholds", None)
        super()._apply(fn, recurse)
        moved = getattr(self, "thresholds", None)
        if thresholds is not None and moved is not None and moved.dtype != thresholds.dtype:
            self.thresholds = thresholds.to(device=moved.device)  # assigning a registered buffer replaces it
        return self

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # In place (nn.Module.compile), so state-dict keys and checkpoints stay the same.
            self.backbone.compile()
            self._compiled = True

    def forward(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_labels)`` for images ``(B, C, H, W)`` and metadata ``(B, metadata_dim)``."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images), metadata)

    def predict_proba(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(images, metadata).float())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which class to rebuild: the checkpoint alone must be enough to predict. Recorded as
        # LightningCLI records it (its own value names the same class, maybe by a re-export), so a
        # checkpoint saved outside the CLI carries it too; with the CLI's instantiator, which
        # load_from_checkpoint needs to read that key (it would pass it on as an argument).
        hyper_parameters = checkpoint.setdefault("hyper_parameters", {})
        hyper_parameters[CLASS_PATH_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        hyper_parameters.setdefault(INSTANTIATOR_KEY, CLI_INSTANTIATOR)
        checkpoint[RNG_STATE_KEY] = torch.get_rng_state()
        if self.device.type == "cuda":
            # Dropout and BEiT's drop-path draw from the device's generator on a GPU. Every rank's
            # generator is seeded alike and advances alike, so rank 0's state serves them all.
            checkpoint[CUDA_RNG_STATE_KEY] = torch.cuda.get_rng_state(self.device)

    # ----- steps -----
    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"], batch["metadata"])
        loss = self.criterion(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at global step {self.global_step} "
                f"(images {list(batch['name'])[:4]}...); lower the learning rate or check the inputs"
            )
        return loss, logits

    def _usable(self, batch: dict, stage: str) -> bool:
        """Record the images a batch skipped (on_bad_image=skip); False if nothing is left."""
        self._skipped[stage].extend(batch.get("skipped", []))
        return len(batch["labels"]) > 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if not self._usable(batch, "train"):
            # Every image of this batch was unreadable and skipped. One process skips the step;
            # under DDP (where Lightning refuses a skipped step) this rank adds zero gradients to
            # every parameter, so the ranks' gradient reductions still match.
            if self.trainer.world_size > 1:
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val", self.val_predictions)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test", self.test_predictions)

    def _evaluation_step(self, batch: dict, stage: str, collector: PredictionCollector) -> None:
        if self._usable(batch, stage):
            loss, logits = self.model_step(batch)
            probs, labels, index, size = torch.sigmoid(logits.float()), batch["labels"], batch["index"], len(batch["labels"])
        else:
            # Every image of this batch was unreadable and skipped. This rank still logs and
            # collects (nothing, with weight 0): under DDP a rank whose batches were all skipped
            # would otherwise miss the epoch-end reductions the other ranks wait in.
            width = self.hparams.num_labels
            loss, size = torch.zeros((), device=self.device), 0
            probs, labels = torch.empty(0, width, device=self.device), torch.empty(0, width, device=self.device)
            index = torch.empty(0, dtype=torch.long, device=self.device)
        # sync_dist: the epoch's loss is the mean over every rank (val/loss drives the scheduler).
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True, batch_size=size)
        collector.update(probs, labels, index)

    def _report_skipped(self, stage: str) -> None:
        names = self._skipped[stage]
        distinct = set(names)
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Distinct names over all ranks: the distributed sampler's padding (and oversampling)
            # can hand one unreadable image to two ranks or twice to one.
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, sorted(distinct))
            distinct = {name for part in gathered for name in part}
        if distinct:
            self.log(f"{stage}/skipped_images", float(len(distinct)), rank_zero_only=True)
            where = f" epoch {self.current_epoch}" if self.trainer.state.fn == TrainerFn.FITTING else ""
            rank_zero_warn(f"[{stage}]{where}: {len(distinct)} unreadable images skipped, e.g. {sorted(distinct)[:5]}")
        self.skipped_images[stage] += names
        self._skipped[stage] = []

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train")

    # Dropout draws from the global RNG (the CUDA generator on a GPU), which Lightning does not
    # checkpoint: save both, and restore them right before the first resumed batch, so a resumed
    # run draws the same dropout masks as an uninterrupted one.
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng_state is not None:
            torch.set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        if self._pending_cuda_rng_state is not None:
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self._pending_cuda_rng_state, self.device)
            self._pending_cuda_rng_state = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RNG_STATE_KEY)
        self._pending_rng_state = state if isinstance(state, torch.Tensor) else None
        cuda_state = checkpoint.get(CUDA_RNG_STATE_KEY)
        self._pending_cuda_rng_state = cuda_state.cpu() if isinstance(cuda_state, torch.Tensor) else None
        # validate/test of a checkpoint do not restore the trainer's epoch: outputs name this one.
        self.checkpoint_epoch = checkpoint.get("epoch")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self.predict_proba(batch["image"], batch["metadata"])
        return {"name": batch["name"], "probs": probs}

    # ----- epoch ends: metrics over the whole epoch, gathered across ranks -----
    def _metrics(self, stage: str, collector: PredictionCollector) -> dict[str, dict]:
        epoch = collector.compute()
        no_finding = NO_FINDING if NO_FINDING in self.label_names else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if len(epoch.indices) == 0:
                # Every image of the epoch was unreadable and skipped: say so once, naming the stage.
                warnings.filterwarnings("ignore", message=NO_SAMPLES_WARNING, category=UserWarning)
                where = f" epoch {self.current_epoch}" if self.trainer.state.fn == TrainerFn.FITTING else ""
                rank_zero_warn(f"[{stage}]{where}: no readable image to score (every batch was skipped): its metrics are NaN")
            tuned = classification_metrics(epoch.probs, epoch.targets, self.thresholds, self.label_names, no_finding)
            default = classification_metrics(epoch.probs, epoch.targets, torch.full_like(self.thresholds, 0.5), self.label_names, no_finding)
        # Each warning once per run (the same labels' undefined AUROC would repeat every validation epoch).
        for warning in caught:
            message = str(warning.message)
            if message not in self._warned:
                self._warned.add(message)
                rank_zero_warn(message, category=warning.category)
        return {"default": default, "tuned": tuned}

    def _log_metrics(self, stage: str, metrics: dict[str, dict]) -> None:
        # Every rank holds the same gathered predictions, so no further sync is needed.
        for group, values in metrics.items():
            suffix = "" if group == "tuned" else "@0.5"
            for name in ("auroc_macro", "auroc_findings", "f1_macro", "precision_macro", "recall_macro", "exact_match"):
                if group == "default" and name.startswith("auroc"):
                    continue  # AUROC does not depend on the threshold
                value = values[name]
                if value is not None and not math.isnan(value):
                    self.log(f"{stage}/{name}{suffix}", value, prog_bar=(name == "auroc_macro"))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_predictions.reset()
            self._skipped["val"] = []
            return
        self._log_metrics("val", self._metrics("val", self.val_predictions))
        self.val_predictions.reset()
        self._report_skipped("val")

    def on_test_epoch_end(self) -> None:
        epoch = self.test_predictions.compute()
        metrics = self._metrics("test", self.test_predictions)
        self._log_metrics("test", metrics)
        self.test_results = {"metrics": metrics, "predictions": epoch, "thresholds": self.thresholds.tolist()}
        if self.trainer.is_global_zero:
            rank_zero_info("\n" + format_metrics_table({"threshold 0.5": metrics["default"], "tuned thresholds": metrics["tuned"]}))
        self.test_predictions.reset()
        self._report_skipped("test")

    # ----- optimisation -----
    def configure_optimizers(self) -> Any:
        h = self.hparams
        # Every trainable parameter, the new head included (the paper's ResNet code left it out).
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(h.optimizer, params, h.lr, h.weight_decay, h.momentum)
        if h.scheduler == "none":
            return optimizer
        if h.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=h.plateau_factor, patience=h.plateau_patience)
            # Stepped only in epochs that validate, on that validation's loss (not on a stale one).
            try:
                every = self.trainer.check_val_every_n_epoch or 1
            except (RuntimeError, AttributeError):  # not attached to a Trainer (configure_optimizers called directly)
                every = 1
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss", "interval": "epoch", "frequency": int(every)}}  # fmt: skip
        if h.scheduler == "warmup_linear":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            warmup = max(int(round(h.warmup_fraction * total)), 1)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return max(0.0, (total - step) / max(total - warmup, 1))

            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        raise ValueError(f"unknown scheduler {h.scheduler!r}; choose none, plateau or warmup_linear")


def build_optimizer(name: str, params: list, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """``adam`` | ``adamw`` | ``sgd`` (with ``momentum``) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")
