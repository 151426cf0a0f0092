"""The interface every dataset implements: raw samples at their original size, the tasks and classes it labels."""
from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from perception.data.io import DataError


class BaseDataset(Dataset):
    """A dataset of raw samples (numpy arrays at the original size, see ``perception.data.batch``).

    Subclasses set ``tasks`` (the tasks whose labels the dataset carries) and ``classes`` (task -> class names for
    ``detection`` and ``segmentation``), and implement ``__len__`` and ``load``. ``load`` raises
    :class:`~perception.data.io.DataError` naming the file for anything unreadable or inconsistent.

    Args:
        root: where the dataset lives.
        split: ``train``, ``val`` or ``test``.
    """

    name = "dataset"
    tasks: tuple[str, ...] = ()
    classes: dict[str, list[str]] = {}

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root = Path(root)
        self.split = split

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> dict:
        """The raw sample ``index``: ``image`` and the labels of ``self.tasks``, plus ``meta`` with ``files``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return self.load(index)

    def describe(self) -> str:
        return f"{self.name} {self.split} ({self.root})"

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise DataError(f"{path}: missing {what} folder; {self.name} expects {self.layout_hint()}")
        return path

    def _require_nonempty(self, items: list, where: Path, pattern: str) -> list:
        if not items:
            raise DataError(f"{where}: no {pattern} files found for the {self.split} split of {self.name}; "
                            f"expected {self.layout_hint()}")
        return items

    def layout_hint(self) -> str:
        """One line describing the expected folder layout (for error messages)."""
        return "its documented layout"
