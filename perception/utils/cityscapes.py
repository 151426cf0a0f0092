"""The Cityscapes label table, read from the official one in cityscapesscripts (never typed in by hand).

The data layer maps labelIds with it; the task settings take its class names as their defaults.
"""
from __future__ import annotations

import functools

import numpy as np

IGNORE_TRAIN_ID = 255  # Cityscapes' own trainId of the classes that are not evaluated


@functools.lru_cache(maxsize=1)
def _labels() -> tuple:
    from cityscapesscripts.helpers.labels import labels

    return tuple(labels)


def cityscapes_tables(level: str = "trainId", ignore_index: int = IGNORE_TRAIN_ID) -> tuple[np.ndarray, list[str]]:
    """Cityscapes labelId -> class LUT and the class names.

    Args:
        level: ``trainId`` (19 classes) or ``category`` (7: flat, construction, object, nature, sky, human,
            vehicle; the ``void`` category is ignored).
        ignore_index: the class of the labelIds that are not evaluated.

    Returns:
        lut (ndarray[256] int64): maps every labelId to its class (``ignore_index`` = ignore); ids outside the
            table map to -1.
        names: the class names in class order.
    """
    lut = np.full(256, -1, np.int64)
    if level == "trainId":
        names: dict[int, str] = {}
        for label in _labels():
            if label.id < 0:
                continue  # "license plate": not a labelId that appears in the images
            evaluated = 0 <= label.trainId < IGNORE_TRAIN_ID
            lut[label.id] = label.trainId if evaluated else ignore_index
            if evaluated:
                names[label.trainId] = label.name
        return lut, [names[i] for i in range(len(names))]
    if level == "category":
        categories: dict[int, str] = {}
        for label in _labels():
            if label.id < 0:
                continue
            cat = label.categoryId - 1  # categoryId 0 is "void"
            lut[label.id] = cat if cat >= 0 else ignore_index
            if cat >= 0:
                categories[cat] = label.category
        return lut, [categories[i] for i in range(len(categories))]
    raise ValueError(f"level: got {level!r}, expected 'trainId' or 'category'")


def _instance_labels() -> list:
    return sorted((l for l in _labels() if l.hasInstances and 0 <= l.trainId < IGNORE_TRAIN_ID),
                  key=lambda l: l.trainId)


def cityscapes_instance_classes() -> dict[int, int]:
    """labelId -> instance class for the 8 Cityscapes instance classes (in trainId order: person .. bicycle)."""
    return {label.id: i for i, label in enumerate(_instance_labels())}


def cityscapes_instance_names() -> list[str]:
    """The names of the 8 Cityscapes instance classes, in trainId order (person, rider, car, ... bicycle)."""
    return [label.name for label in _instance_labels()]


def cityscapes_class_names() -> list[str]:
    """The names of the 19 evaluated Cityscapes classes, in trainId order (road, sidewalk, ... bicycle)."""
    return cityscapes_tables("trainId")[1]
