"""Predicting on new image files with a trained checkpoint: ``cxr-lightning predict-files``.

What it takes:

* **images**: files (PNG/JPEG/TIFF/BMP through :func:`~cxr_lightning.data.images.load_grey`;
  DICOM, recognised by a ``.dcm``/``.dicom``/``.dic`` suffix or the ``DICM`` magic, through
  :func:`~cxr_lightning.data.dicom.load_dicom_grey`), folders (searched recursively for those
  files), glob patterns (``'scans/**/*.png'``, quoted so the shell leaves them alone) and list
  files (``.txt``/``.lst``/``.list``: one path per line, relative paths relative to the list file).
* **metadata** (age, sex, view), per field, from the first source that knows it:

  1. an optional CSV with the columns ``image``, ``age``, ``sex``, ``view`` or NIH's
     ``Image Index``, ``Patient Age``, ``Patient Gender``, ``View Position`` (so the NIH metadata
     CSV itself works). Rows match a file by its path as written, else its file name, else its
     name without suffix (when unique). Ages may be numbers or DICOM strings (``058Y``); sex
     ``M``/``F`` (or male/female); view ``PA``/``AP``;
  2. the DICOM tags ``PatientAge``, ``PatientSex``, ``ViewPosition``;
  3. defaults: an unknown age is imputed by the metadata encoder with the **training split's mean
     age** (as in training), an unknown sex or view is ``''`` (the encoder's "unknown": all-zero
     one-hots, or 0.5 for the CNN encoding's sex).

The output CSV has one row per readable image: ``image`` (file name), ``path``,
``metadata_source`` (``csv``, ``dicom``, ``csv+dicom`` or ``default``: which sources gave the
known fields; unknown fields are always imputed), the raw ``age``/``sex``/``view`` used (NaN/empty
= unknown, imputed), ``prob_<Label>`` (sigmoid probability) and ``pred_<Label>`` (1 when
``prob >= threshold``, the checkpoint's tuned per-label threshold). Unreadable files are reported
on stderr and listed in the result's ``attrs['skipped']`` and in ``<out>.skipped.csv``
(``path,reason``; header only when none); they never stop the run.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
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

from cxr_lightning.data.dicom import DICOM_SUFFIXES, is_dicom_file, load_dicom_grey, parse_dicom_age
from cxr_lightning.data.image_files import unreadable_reason, walk_folder
from cxr_lightning.data.images import ImageDecodeError, load_grey

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedImage",
    "PreparedBatch",
    "Predictor",
    "add_predict_arguments",
    "load_image",
    "read_metadata_table",
    "resolve_inputs",
    "run_predict",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")

#: accepted metadata CSV column names (compared case-insensitively) -> our name
METADATA_COLUMNS = {
    "image": "image",
    "image index": "image",
    "path": "image",
    "file": "image",
    "age": "age",
    "patient age": "age",
    "sex": "sex",
    "patient gender": "sex",
    "patient sex": "sex",
    "gender": "sex",
    "view": "view",
    "view position": "view",
}
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _is_image_candidate(path: Path, is_dir: bool = False) -> bool:
    """An image by its suffix (a folder or a link loop named like one too: decoding then says what it is), or a suffix-less DICOM file."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and not is_dir and is_dicom_file(path)  # DICOM files often have no suffix


def _folder_files(folder: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The image files below ``folder`` (hidden entries left out) and the sub-folders that could not be listed."""
    walk = walk_folder(folder)
    files = sorted(entry.path for entry in walk.entries if _is_image_candidate(entry.path, entry.is_dir))
    return files, [{"path": str(path), "reason": reason} for path, reason in walk.unlisted]


def _read_list_file(path: Path) -> tuple[list[tuple[int, str]], str | None]:
    """``(line number, text)`` of a list file's paths (blank and ``#`` lines counted, not returned), or the reason it is unreadable.

    Read as ``utf-8-sig``: a byte-order mark is not part of the first path.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        return [], f"list file is not UTF-8 text (byte {err.start}: {err.reason})"
    except OSError as err:
        return [], f"cannot read the list file ({err.strerror or err})"
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, line) for number, line in lines if line and not line.startswith("#")], None


def resolve_inputs(inputs: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Expand files, folders, globs and list files into image paths (in order, without duplicates).

    Returns ``(paths, problems)`` where each problem is ``{'path': ..., 'reason': ...}`` for an
    input that matched nothing (a missing file, an empty glob, an empty folder) or is not a file
    (a folder named like an image, a symbolic link loop...); a list file's entries say their line.
    Paths that exist but cannot be decoded are returned: decoding reports them.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    problems: list[dict[str, str]] = []

    def add(item: str | Path, base: Path | None = None, origin: str = "") -> None:
        text = str(item).strip()
        if not text:
            return
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path

        def problem(reason: str) -> None:
            problems.append({"path": str(path), "reason": reason + origin})

        if path.is_dir():
            found, unlisted = _folder_files(path)
            problems.extend(unlisted)
            if not found and not unlisted:
                named_like_image = _is_image_candidate(path, is_dir=True)
                what = "a directory, not an image file, and it holds" if named_like_image else "folder holds"
                problem(f"{what} no PNG/JPEG/DICOM file")
            paths.extend(found)
        elif path.is_file():
            if path.suffix.lower() in LIST_SUFFIXES and base is None:
                lines, unreadable = _read_list_file(path)
                if unreadable is not None:
                    problem(unreadable)
                for number, line in lines:
                    add(line, base=path.parent, origin=f" (line {number} of {path})")
            else:
                paths.append(path)
        elif _GLOB_CHARS & set(text) and not os.path.lexists(path):
            pattern = str(path)
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            files = [m for m in matches if not m.is_dir() and _is_image_candidate(m)]
            for folder in (m for m in matches if m.is_dir()):
                found, unlisted = _folder_files(folder)
                files += found
                problems.extend(unlisted)
            if not files:
                problem("no image file matches this pattern")
            paths.extend(files)
        else:
            problem(unreadable_reason(path) or "file not found")

    for item in items:
        add(item)
    # One entry per file, however it was reached (a list file's "../x.png" and a glob's "x.png").
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(_identity(p), p)
    return list(unique.values()), problems


def _identity(path: Path) -> Path:
    """The path a file is known by whatever the route to it; a link loop's own path (resolve() would raise)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


def _clean_sex(value: Any) -> str:
    return _SEX.get(str(value).strip().upper(), "") if isinstance(value, str) else ""


def _clean_view(value: Any) -> str:
    text = str(value).strip().upper() if isinstance(value, str) else ""
    return text if text in ("PA", "AP") else ""


def read_metadata_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A metadata CSV (or a frame already read) as a frame with ``image``, ``age`` (years, NaN unknown), ``sex``, ``view``.

    Accepts our names (``image, age, sex, view``) or NIH's (``Image Index, Patient Age, Patient
    Gender, View Position``); only the image column is required. Ages may be numbers or DICOM age
    strings (``058Y``), sexes and views any case. Duplicated images keep their first row.
    """
    if isinstance(source, pd.DataFrame):
        raw, where = source, "metadata table"
    else:
        where = str(source)
        try:
            raw = pd.read_csv(Path(source), dtype=str, keep_default_na=False, na_values=[""])
        except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise ValueError(f"cannot read metadata CSV {source}: {err}") from err
    rename: dict[str, str] = {}
    for column in raw.columns:
        ours = METADATA_COLUMNS.get(str(column).strip().lower())
        if ours is not None and ours not in rename.values():
            rename[column] = ours
    raw = raw.rename(columns=rename)
    if "image" not in raw.columns:
        raise ValueError(f"{where}: no image column; expected 'image' or 'Image Index' (found {list(raw.columns)})")
    blank = pd.Series([None] * len(raw), index=raw.index)
    frame = pd.DataFrame({"image": [str(v).strip() if isinstance(v, str) else "" for v in raw["image"]]}, index=raw.index)
    frame["age"] = [parse_dicom_age(v) for v in raw.get("age", blank)]
    frame["sex"] = [_clean_sex(v) for v in raw.get("sex", blank)]
    frame["view"] = [_clean_view(v) for v in raw.get("view", blank)]
    frame = frame[frame["image"] != ""]
    duplicated = frame["image"].duplicated()
    if duplicated.any():
        print(f"[metadata] {where}: {int(duplicated.sum())} duplicated image rows; the first of each is used", file=sys.stderr)
        frame = frame[~duplicated]
    return frame.reset_index(drop=True)


class _MetadataLookup:
    """Finds a file's row of a metadata table: by the longest path suffix, else by a unique file name or stem.

    A row ``a/scan.png`` matches the file ``/data/a/scan.png`` (and not ``/data/b/scan.png``). A
    bare name matches a file of that name only when no other row has the same name; a name shared
    by several rows is ambiguous: no row is used and the file is counted in ``ambiguous``.
    """

    def __init__(self, table: pd.DataFrame | None):
        self.by_path: dict[tuple[str, ...], dict[str, Any]] = {}
        self.by_name: dict[str, dict[str, Any] | None] = {}
        self.by_stem: dict[str, dict[str, Any] | None] = {}
        self.ambiguous: set[str] = set()
        if table is None:
            return
        for row in table.to_dict("records"):
            key = Path(row["image"])
            self.by_path.setdefault(key.parts, row)
            self.by_name[key.name] = None if key.name in self.by_name else row  # None: ambiguous
            self.by_stem[key.stem] = None if key.stem in self.by_stem else row

    def find(self, path: Path) -> dict[str, Any] | None:
        for parts in (path.parts, path.resolve().parts):
            for k in range(len(parts), 1, -1):  # the longest suffix of two or more parts first
                row = self.by_path.get(parts[-k:])
                if row is not None:
                    return row
        for index, key in ((self.by_name, path.name), (self.by_stem, path.stem)):
            if key in index:
                if index[key] is None:
                    self.ambiguous.add(str(path))
                return index[key]
        return None


def _merge_metadata(csv_row: dict[str, Any] | None, tags: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """Per field the first known of CSV, DICOM tags, unknown; and the sources used."""
    values: dict[str, Any] = {"age": math.nan, "sex": "", "view": ""}
    sources: list[str] = []
    for given, source in ((csv_row, "csv"), (tags, "dicom")):
        if not given:
            continue
        for key in values:
            known = not (isinstance(values[key], float) and math.isnan(values[key])) and values[key] != ""
            candidate = given.get(key)
            usable = candidate is not None and candidate != "" and not (isinstance(candidate, float) and math.isnan(candidate))
            if not known and usable:
                values[key] = candidate
                if source not in sources:
                    sources.append(source)
    return values, "+".join(sources) or "default"


# ----------------------------------------------------------------------------------------------
# Loading and batching
# ----------------------------------------------------------------------------------------------


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
        from cxr_lightning.checkpoint import load_classifier

        model, spec = load_classifier(checkpoint, map_location="cpu", trusted_classes=trusted_classes)
        self._setup(model, spec, device, batch_size, num_workers)
        self.checkpoint = Path(checkpoint)

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
        frame = pd.DataFrame(
            {
                "age": [float(r.get("age", math.nan)) for r in rows],
                "sex": [r.get("sex", "") or "" for r in rows],
                "view": [r.get("view", "") or "" for r in rows],
            }
        )
        return torch.from_numpy(self.encoder.encode(frame))

    @torch.inference_mode()
    def predict_tensors(self, images: torch.Tensor, metadata: torch.Tensor) -> np.ndarray:
        """Probabilities ``(B, L)`` for normalised images ``(B, C, S, S)`` and encoded metadata ``(B, M)``."""
        logits = self.model(images.to(self.device), metadata.to(self.device))
        return torch.sigmoid(logits.float()).cpu().numpy()

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
        lookup = _MetadataLookup(metadata)
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
                    merged = [_merge_metadata(lookup.find(item.path), item.tags) for item, _ in kept]
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
        """Predict every image of ``inputs`` (files, folders, globs, list files; see the module doc).

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


def skipped_csv_path(out_csv: str | Path) -> Path:
    """Where :meth:`Predictor.predict_files` lists the skipped files: ``preds.csv`` -> ``preds.skipped.csv``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".skipped.csv")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint --images --metadata --batch-size --device --workers --no-progress``."""
    from cxr_lightning.checkpoint import add_trust_argument

    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (.ckpt) written by cxr-lightning fit")
    add_trust_argument(parser)
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="PATH",
        help="image files (PNG/JPEG/DICOM), folders (searched recursively), quoted glob patterns or .txt list files",
    )  # fmt: skip
    parser.add_argument(
        "--metadata", type=Path, default=None, metavar="CSV",
        help="CSV with columns image,age,sex,view (or NIH's Image Index,Patient Age,Patient Gender,View Position); "
        "else DICOM tags; else the training mean age and unknown sex/view",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``cxr-lightning predict-files``."""
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output CSV (skipped files go to <out stem>.skipped.csv)")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Run ``predict-files``; 0 on success, 1 when no image could be predicted.

    The output folder is checked before the model is loaded; the CSV and its skipped list appear
    together under their names only when both are complete (a full disk leaves neither).
    """
    from cxr_lightning.output_files import atomic_outputs, check_writable_folder

    check_writable_folder(Path(args.out).parent, "the predictions")
    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                          trusted_classes=args.trusted_classes)  # fmt: skip
    with atomic_outputs(args.out, skipped_csv_path(args.out)) as (staged_out, _):
        frame = predictor.predict_files(args.images, metadata_csv=args.metadata, out_csv=staged_out, progress=not args.no_progress)
    skipped = frame.attrs.get("skipped", [])
    note = f"; {len(skipped)} skipped, see {skipped_csv_path(args.out)}" if skipped else ""
    print(f"wrote {len(frame)} predictions to {args.out}{note}", file=sys.stderr)
    return 0 if len(frame) else 1


def build_predict_parser(prog: str = "cxr-lightning predict-files") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Predict label probabilities and decisions for image files with a checkpoint.")
    return add_predict_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return run_predict(build_predict_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
