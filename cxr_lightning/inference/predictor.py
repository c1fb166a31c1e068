"""A checkpoint predicting on image files: decoding, batching, metadata encoding, probabilities and decisions.

:meth:`Predictor.predict_files` gives one row per readable image: ``image`` (file name), ``path``,
``metadata_source`` (``csv``, ``dicom``, ``csv+dicom`` or ``default``: which sources gave the
known fields, see :mod:`cxr_lightning.inference.metadata_table`; unknown fields are always
imputed), the raw ``age``/``sex``/``view`` used (NaN/empty = unknown, imputed), ``prob_<Label>``
(sigmoid probability) and ``pred_<Label>`` (1 when ``prob >= threshold``, the checkpoint's tuned
per-label threshold). Unreadable files are reported on stderr and listed in the result's
``attrs['skipped']`` and in ``<out>.skipped.csv`` (``path,reason``; header only when none); they
never stop the run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxr_lightning.checkpoint import load_classifier
from cxr_lightning.data.dicom import is_dicom_file, load_dicom_grey
from cxr_lightning.data.encoding import metadata_frame
from cxr_lightning.data.images import ImageDecodeError, load_grey
from cxr_lightning.inference.inputs import IMAGE_SUFFIXES, resolve_inputs
from cxr_lightning.inference.metadata_table import MetadataLookup, merge_metadata, read_metadata_table

__all__ = ["LoadedImage", "PreparedBatch", "Predictor", "load_image", "skipped_csv_path"]


@dataclass
class LoadedImage:
    """One decoded file: grey ``(1, H, W)`` in [0, 1] and, for DICOM, its tags."""

    path: Path
    grey: torch.Tensor
    tags: dict[str, Any] | None = None

    @property
    def original_size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels of the file."""
        return int(self.grey.shape[-1]), int(self.grey.shape[-2])


def load_image(path: str | Path) -> LoadedImage:
    """Decode any supported file; raises :class:`ImageDecodeError` naming the file."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES and is_dicom_file(path):
        grey, tags = load_dicom_grey(path)
        return LoadedImage(path, grey, tags)
    return LoadedImage(path, load_grey(path))


@dataclass
class PreparedBatch:
    """Model-ready inputs of a batch of files."""

    paths: list[Path]
    images: torch.Tensor  # (B, C, S, S) normalised
    metadata: torch.Tensor  # (B, M) encoded
    raw_metadata: list[dict[str, Any]]  # age/sex/view used (unknown: NaN/'')
    sources: list[str]
    original_sizes: list[tuple[int, int]]  # (W, H) of each file
    greys: list[torch.Tensor] = field(default_factory=list)  # (1, H, W) originals, when kept


class Predictor:
    """A checkpoint ready to predict on image files.

    Args:
        checkpoint: a ``.ckpt`` written by ``cxr-lightning fit`` (see :func:`~cxr_lightning.checkpoint.load_classifier`).
        device: torch device for the model (``cpu``, ``cuda``, ``cuda:1``...).
        batch_size: images per forward pass.
        num_workers: threads decoding and resizing images (0: in the calling thread).
        trusted_classes: model class paths outside cxr_lightning the checkpoint may name (their
            import runs their code; see :func:`~cxr_lightning.checkpoint.load_classifier`).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        num_workers: int = 2,
        trusted_classes: Sequence[str] = (),
    ):
        model, spec = load_classifier(checkpoint, map_location="cpu", trusted_classes=trusted_classes)
        self._setup(model, spec, device, batch_size, num_workers)
        self.checkpoint = Path(checkpoint)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, **options: Any) -> Predictor:
        """``Predictor.from_checkpoint("runs/demo/checkpoints/best.ckpt", device="cuda")``: the same as the constructor."""
        return cls(checkpoint, **options)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, spec: Any, device: str | torch.device = "cpu", batch_size: int = 16, num_workers: int = 2
    ) -> Predictor:
        """A predictor for an in-memory model and its :class:`~cxr_lightning.checkpoint.DataSpec`."""
        self = cls.__new__(cls)
        self._setup(model, spec, device, batch_size, num_workers)
        self.checkpoint = None
        return self

    def _setup(self, model, spec, device, batch_size: int, num_workers: int) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.transform = spec.transform()
        self.encoder = spec.metadata_encoder
        self.label_names = list(spec.label_names)
        self.thresholds = model.thresholds.detach().float().cpu().numpy().copy()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    # ----- pieces -----
    def encode_metadata(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Encode ``[{'age', 'sex', 'view'}, ...]`` with the checkpoint's metadata encoder."""
        return torch.from_numpy(self.encoder.encode(metadata_frame(rows)))

    @torch.inference_mode()
    def predict_tensors(self, images: torch.Tensor, metadata: torch.Tensor) -> np.ndarray:
        """Probabilities ``(B, L)`` for normalised images ``(B, C, S, S)`` and encoded metadata ``(B, M)``."""
        logits = self.model(images.to(self.device), metadata.to(self.device))
        return torch.sigmoid(logits.float()).cpu().numpy()

    def predict_array(
        self, image: Any, age: float | None = None, sex: str | None = None, view: str | None = None
    ) -> pd.DataFrame:
        """Probabilities and tuned decisions for one image held in memory, with its age, sex and view.

        ``image``: a ``(H, W)`` grey array (or ``(1, H, W)``; numpy or torch): ``uint8`` (0-255),
        ``uint16`` (0-65535) or floats in [0, 1]. Unknown age, sex or view are left ``None`` (the
        training mean age, unknown sex and view, as for files). Returns one row per label, indexed
        by label: ``probability``, ``threshold`` (tuned on validation) and ``decision`` (0/1).
        """
        return self._predict_one(_grey_tensor(image), {"age": age, "sex": sex, "view": view}, None)

    def predict_file(self, path: str | Path, age: float | None = None, sex: str | None = None, view: str | None = None) -> pd.DataFrame:
        """:meth:`predict_array` for one PNG, JPEG or DICOM file; a DICOM's own tags fill what is not given."""
        loaded = load_image(path)
        return self._predict_one(loaded.grey, {"age": age, "sex": sex, "view": view}, loaded.tags)

    def _predict_one(self, grey: torch.Tensor, given: dict[str, Any], tags: dict[str, Any] | None) -> pd.DataFrame:
        values, _ = merge_metadata({k: v for k, v in given.items() if v is not None}, tags)
        probs = self.predict_tensors(self.transform(grey).unsqueeze(0), self.encode_metadata([values]))[0]
        return pd.DataFrame({"probability": probs, "threshold": self.thresholds, "decision": self.decisions(probs[None, :])[0]},
                            index=pd.Index(self.label_names, name="label"))  # fmt: skip

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """0/1 decisions at the checkpoint's tuned thresholds (``prob >= threshold``)."""
        return (probs >= self.thresholds[None, :]).astype(np.int64)

    def _load(self, path: Path) -> tuple[LoadedImage, torch.Tensor] | str:
        try:
            loaded = load_image(path)
            return loaded, self.transform(loaded.grey)
        except ImageDecodeError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - any other failure of one file must not stop the rest
            return f"{path}: {type(err).__name__}: {err}"

    def iter_batches(
        self,
        paths: Sequence[Path],
        metadata: pd.DataFrame | None = None,
        skipped: list[dict[str, str]] | None = None,
        progress: bool = False,
        keep_grey: bool = False,
        desc: str = "predict",
    ) -> Iterator[PreparedBatch]:
        """Decode, transform and encode ``paths`` in batches; unreadable files go to ``skipped``."""
        lookup = MetadataLookup(metadata)
        skipped = [] if skipped is None else skipped
        workers = ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else None
        try:
            with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
                for start in range(0, len(paths), self.batch_size):
                    chunk = list(paths[start : start + self.batch_size])
                    results = list(workers.map(self._load, chunk)) if workers else [self._load(p) for p in chunk]
                    kept: list[tuple[LoadedImage, torch.Tensor]] = []
                    for path, result in zip(chunk, results):
                        if isinstance(result, str):
                            reason = result[len(f"{path}: ") :] if result.startswith(f"{path}: ") else result
                            skipped.append({"path": str(path), "reason": reason})
                            tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)
                        else:
                            kept.append(result)
                    bar.update(len(chunk))
                    if not kept:
                        continue
                    merged = [merge_metadata(lookup.find(item.path), item.tags) for item, _ in kept]
                    raw = [values for values, _ in merged]
                    yield PreparedBatch(
                        paths=[item.path for item, _ in kept],
                        images=torch.stack([tensor for _, tensor in kept]),
                        metadata=self.encode_metadata(raw),
                        raw_metadata=raw,
                        sources=[source for _, source in merged],
                        original_sizes=[item.original_size for item, _ in kept],
                        greys=[item.grey for item, _ in kept] if keep_grey else [],
                    )
            if lookup.ambiguous:
                print(f"[metadata] {len(lookup.ambiguous)} image(s) match several rows of the metadata table by file name "
                      f"(e.g. {sorted(lookup.ambiguous)[:3]}); their metadata is unknown: give paths in the image column "
                      "to tell them apart", file=sys.stderr)  # fmt: skip
        finally:
            if workers is not None:
                workers.shutdown()

    # ----- the command's work -----
    def output_columns(self) -> list[str]:
        return (
            ["image", "path", "metadata_source", "age", "sex", "view"]
            + [f"prob_{name}" for name in self.label_names]
            + [f"pred_{name}" for name in self.label_names]
        )

    def predict_files(
        self,
        inputs: str | Path | Iterable[str | Path],
        metadata_csv: str | Path | pd.DataFrame | None = None,
        out_csv: str | Path | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Predict every image of ``inputs`` (files, folders, globs, list files; see :mod:`cxr_lightning.inference.inputs`).

        Returns one row per readable image (columns: :meth:`output_columns`); ``attrs['skipped']``
        lists ``{'path', 'reason'}`` of unreadable or missing inputs. With ``out_csv`` the frame is
        written there and the skipped list to ``<out_csv stem>.skipped.csv``.
        """
        paths, skipped = resolve_inputs(inputs)
        for problem in skipped:
            print(f"skipped {problem['path']}: {problem['reason']}", file=sys.stderr)
        table = None if metadata_csv is None else read_metadata_table(metadata_csv)
        rows: list[dict[str, Any]] = []
        for batch in self.iter_batches(paths, table, skipped, progress=progress):
            probs = self.predict_tensors(batch.images, batch.metadata)
            preds = self.decisions(probs)
            for i, path in enumerate(batch.paths):
                row: dict[str, Any] = {
                    "image": path.name,
                    "path": str(path),
                    "metadata_source": batch.sources[i],
                    **batch.raw_metadata[i],
                }
                row.update({f"prob_{name}": float(probs[i, j]) for j, name in enumerate(self.label_names)})
                row.update({f"pred_{name}": int(preds[i, j]) for j, name in enumerate(self.label_names)})
                rows.append(row)
        frame = pd.DataFrame(rows, columns=self.output_columns())
        frame.attrs["skipped"] = skipped
        if table is not None and len(frame):
            unmatched = int((~frame["metadata_source"].str.contains("csv")).sum())
            if unmatched:
                print(f"[metadata] {unmatched} of {len(frame)} images have no usable row in the metadata CSV", file=sys.stderr)
        if out_csv is not None:
            out_csv = Path(out_csv)
            out_csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(out_csv, index=False)
            pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(skipped_csv_path(out_csv), index=False)
        return frame


def _grey_tensor(image: Any) -> torch.Tensor:
    """A ``(1, H, W)`` float32 tensor in [0, 1] from a grey array; a clear error for anything else."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"predict_array takes one grey image of shape (H, W) or (1, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError("predict_array: a float image must hold finite values in [0, 1] (divide 8-bit pixels by 255)")
    else:
        raise ValueError(f"predict_array: pixels of dtype {array.dtype} are not supported; give uint8, uint16 or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(values))[None]


def skipped_csv_path(out_csv: str | Path) -> Path:
    """Where :meth:`Predictor.predict_files` lists the skipped files: ``preds.csv`` -> ``preds.skipped.csv``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".skipped.csv")
