"""The model tells the data its input: ``data.images`` size, channels and normalisation left null come from the backbone.

A :class:`~cxr_lightning.models.BackboneClassifier` knows what its backbone expects (timm's own
pretrained config, torchvision's ImageNet statistics, torchxrayvision's one channel in
[-1024, 1024]). Before anything is built, the CLI asks the configured model class for those
facts (``input_facts_for(**init_args)``, which builds no weights and opens no file) and fills the
data options the config left null, so a config names the backbone once. A value the config does
set is kept: another size is a choice (fine-tuning at 320 px), another channel count cannot work
and is refused, another normalisation of pretrained weights is warned about.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from cxr_lightning.data.options import ConfigValueError


def model_input_facts(model_config: Any) -> Any | None:
    """The input facts the configured model class gives for its init args, or None (the paper's models give none)."""
    if model_config is None:
        return None
    class_path = model_config.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    # The class the user configured: LightningCLI imports it next in any case.
    cls = getattr(importlib.import_module(module), name, None)
    facts_for = getattr(cls, "input_facts_for", None)
    if facts_for is None:
        return None
    init = model_config.get("init_args")
    init = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    return facts_for(**init)


def fill_input_facts(config: Any) -> None:
    """Set ``data.images.size/channels/normalization`` left null in ``config`` (one subcommand's) from its model."""
    data, model = config.get("data"), config.get("model")
    if data is None:
        return
    facts = model_input_facts(model)
    if facts is None:
        return
    backbone = (model.get("init_args") or {}).get("backbone", model.get("class_path"))
    images = data["images"]
    if images["channels"] is None:
        images["channels"] = facts.channels
    elif images["channels"] != facts.channels:
        raise ConfigValueError(f"data.images.channels is {images['channels']}, but {backbone} takes {facts.channels}-channel images; "
                               "leave data.images.channels unset (null) to take the backbone's")  # fmt: skip
    if images["size"] is None:
        images["size"] = facts.image_size
    if images["normalization"] is None:
        if facts.normalization is None:
            raise ConfigValueError(f"{backbone} normalises with mean {facts.mean} and std {facts.std}, which no named "
                                   "normalisation matches; set data.images.normalization (imagenet, beit, xrv, none)")  # fmt: skip
        images["normalization"] = facts.normalization
    elif facts.normalization is not None and images["normalization"] != facts.normalization:
        weights = (model.get("init_args") or {}).get("weights")
        if weights not in (None, "none", "null"):
            warnings.warn(f"data.images.normalization is {images['normalization']!r}, but the pretrained {backbone} expects "
                          f"{facts.normalization!r}; leave it unset (null) to take the backbone's", stacklevel=2)  # fmt: skip
