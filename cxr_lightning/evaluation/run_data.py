"""The data a run used, rebuilt from its saved config: its metadata and its split (for Table 4)."""

from __future__ import annotations

from pathlib import Path

from cxr_lightning.data.metadata import (
    TEST_LIST,
    TRAIN_VAL_LIST,
    MetadataError,
    NIHMetadata,
    find_image_list,
    find_metadata_csv,
    packaged_file,
    packaged_metadata,
    read_metadata,
)
from cxr_lightning.data.splits import Split, make_split
from cxr_lightning.evaluation.runs import Run


def run_split(run: Run | None) -> tuple[NIHMetadata, Split, str]:
    """The metadata and split of ``run``'s config, and where they came from.

    The data root of a saved config is relative to where the run was made; when it is not found
    from here (or no run is given), the packaged NIH metadata and the paper split stand in, and
    the description says so.
    """
    data = run.data_config if run is not None else {}
    root = Path(str(data.get("data_root", "")))
    if run is not None and data and root.is_dir():
        split_options, metadata = data.get("split") or {}, data.get("metadata") or {}
        try:
            csv = Path(metadata["csv"]) if metadata.get("csv") else find_metadata_csv(root)
            meta = read_metadata(csv, quiet=True)
            split = make_split(
                split_options.get("name", "paper"),
                meta,
                Path(split_options["train_val_list"]) if split_options.get("train_val_list") else find_image_list(root, TRAIN_VAL_LIST),
                Path(split_options["test_list"]) if split_options.get("test_list") else find_image_list(root, TEST_LIST),
                **{k: split_options[k] for k in ("val_fraction", "seed", "stratify") if k in split_options},
                **({"fractions": tuple(split_options["fractions"])} if "fractions" in split_options else {}),
            )
            return meta, split, f"computed from the data of `{run.name}`: {csv}, split {split.name}"
        except (OSError, ValueError, MetadataError) as err:
            where = f"the packaged NIH metadata, paper split (the data of `{run.name}` could not be read: {err})"
    elif run is not None:
        where = f"the packaged NIH metadata, paper split (the data root of `{run.name}`, {root}, is not found from here)"
    else:
        where = "the packaged NIH metadata, paper split (no run names its data)"
    meta = packaged_metadata()
    split = make_split("paper", meta, packaged_file("train_val_list.txt.gz"), packaged_file("test_list.txt.gz"))
    return meta, split, where
