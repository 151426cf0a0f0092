"""Label tables and class maps across datasets.

Each dataset names its own classes per task (``dataset.classes["detection"]``, ``["segmentation"]``); a mix of
datasets trains one label space (``data.detection_classes`` / ``data.semantic_classes``), and each dataset's names
are mapped onto it by name, with ``class_map`` renaming or dropping (``null``) classes. A class that maps nowhere
is an error rather than a silent loss.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from perception.data.batch import IGNORE_INDEX
# The Cityscapes table (from cityscapesscripts), under the names the datasets import it by.
from perception.utils.cityscapes import (cityscapes_instance_classes, cityscapes_instance_names,  # noqa: F401
                                         cityscapes_tables)
from perception.utils.configurable import ConfigError

LABEL_TASKS = ("detection", "segmentation")


@dataclass
class LabelMap:
    """Maps a dataset's native label ids to the mix's ids.

    Attributes:
        detection: ndarray[C_native] native label -> mix label, -1 = drop the box; ``None``: identity.
        segmentation: ndarray[C_native] native id -> mix id, 255 = ignore; ``None``: identity.
    """

    detection: np.ndarray | None = None
    segmentation: np.ndarray | None = None

    def apply(self, sample: dict) -> dict:
        """Remap ``sample``'s labels in place (ids already checked to be in the native range)."""
        if self.segmentation is not None and "semantic" in sample:
            lut = np.append(self.segmentation, np.full(256 - len(self.segmentation), IGNORE_INDEX))
            lut[IGNORE_INDEX] = IGNORE_INDEX
            sample["semantic"] = lut[sample["semantic"]]
        if self.detection is not None and "labels" in sample:
            mapped = self.detection[np.asarray(sample["labels"], np.int64)]
            keep = mapped >= 0
            sample["boxes"] = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)[keep]
            sample["labels"] = mapped[keep]
            if "crowd" in sample:
                sample["crowd"] = np.asarray(sample["crowd"], bool).reshape(-1)[keep]
        return sample


def build_label_map(native: Mapping[str, Sequence[str]], target: Mapping[str, Sequence[str]],
                    class_map: Mapping[str, str | None], dataset: str) -> LabelMap:
    """The map from a dataset's classes to the mix's.

    Args:
        native: task -> the dataset's class names.
        target: task -> the mix's class names (empty: keep the native ids).
        class_map: native name -> mix name, or ``None`` to drop the class; the key ``"*"`` (value ``None``) drops
            every class that is neither mapped nor named like a class of the mix.
        dataset: the dataset's description for error messages.

    Raises:
        ConfigError: a ``class_map`` key that is not a class of the dataset, a target name that is not in the mix,
            or a native class that maps nowhere.
    """
    all_native = {name for task in LABEL_TASKS for name in native.get(task, ())}
    if class_map.get("*", None) is not None:
        raise ConfigError(f"{dataset}: class_map['*'] must be null (drop every class not mapped otherwise), got "
                          f"{class_map['*']!r}")
    for name in class_map:
        if name not in all_native and name != "*":
            close = difflib.get_close_matches(name, sorted(all_native), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{dataset}: class_map key {name!r} is not a class of this dataset.{hint}")
    maps = {}
    for task, drop in (("detection", -1), ("segmentation", IGNORE_INDEX)):
        names = list(native.get(task, ()))
        wanted = list(target.get(task, ()))
        if not names:
            continue
        if not wanted and not any(class_map.get(n, n) != n for n in names) and "*" not in class_map:
            maps[task] = None
            continue
        space = wanted or names
        lut = np.full(len(names), drop, np.int64)
        unmapped = []
        for i, name in enumerate(names):
            mapped = class_map[name] if name in class_map else name if name in space or "*" not in class_map else None
            if mapped is None:
                continue
            if mapped not in space:
                unmapped.append(f"{name!r}" + (f" -> {mapped!r}" if mapped != name else ""))
                continue
            lut[i] = space.index(mapped)
        if unmapped:
            key = "data.detection_classes" if task == "detection" else "data.semantic_classes"
            raise ConfigError(f"{dataset}: {task} classes {', '.join(unmapped[:8])}"
                              f"{' ...' if len(unmapped) > 8 else ''} are not in {key} ({space}); map them with "
                              "class_map (a null value drops a class)")
        maps[task] = lut
    return LabelMap(detection=maps.get("detection"), segmentation=maps.get("segmentation"))
