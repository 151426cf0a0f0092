"""Several datasets behind one index: task filtering, class maps, checks, transforms and skipping of bad samples.

Global index ``i`` addresses dataset ``d`` at local index ``i - offsets[d]``. An item may come with a seed,
``dataset[(i, seed)]``, which the training sampler provides so that augmentation is reproducible per sample.
"""
from __future__ import annotations

import bisect
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from perception.data.batch import LABEL_KEYS, sample_keys
from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, check_sample
from perception.data.labels import LabelMap

MAX_CONSECUTIVE_BAD = 100


class MixedDataset(Dataset):
    """The datasets of one split, prepared for the network.

    Args:
        datasets: the raw datasets.
        tasks: per dataset, the tasks whose labels are kept.
        label_maps: per dataset, the map of its classes onto the mix's.
        num_classes: per dataset, {task: number of native classes} that label ids are checked against.
        transform: ``transform(sample, seed)`` -> tensors at the network's size (``JointTransform``).
        skip_bad: on a bad sample, take the next one of the same dataset and report the bad one in the sample's
            ``skipped`` list (collated into ``Batch.skipped``) instead of raising.
    """

    def __init__(self, datasets: Sequence[BaseDataset], tasks: Sequence[Sequence[str]],
                 label_maps: Sequence[LabelMap], num_classes: Sequence[dict[str, int]],
                 transform: Callable[[dict, int | None], dict] | None, skip_bad: bool = False) -> None:
        if not datasets:
            raise ValueError("MixedDataset: no datasets")
        self.datasets = list(datasets)
        self.dataset_tasks = [tuple(t) for t in tasks]
        self.label_maps = list(label_maps)
        self.num_classes = list(num_classes)
        self.transform = transform
        self.skip_bad = skip_bad
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64).tolist()
        self.tasks = tuple(t for t in LABEL_KEYS if any(t in dt for dt in self.dataset_tasks))

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset, local index) of global ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range 0..{len(self) - 1}")
        d = bisect.bisect_right(self.offsets, index) - 1
        return d, index - self.offsets[d]

    def raw(self, index: int) -> dict:
        """Sample ``index`` read, filtered to its tasks, checked and class-mapped, before the transform."""
        d, local = self.locate(index)
        return self._prepare(d, local)

    def _prepare(self, d: int, local: int) -> dict:
        sample = self.datasets[d].load(local)
        keep = {"image", "meta"} | {k for t in self.dataset_tasks[d] for k in sample_keys(t, optional=True)}
        sample = {k: v for k, v in sample.items() if k in keep}
        sample.setdefault("meta", {})
        sample["meta"].setdefault("dataset", self.datasets[d].name)
        sample = check_sample(sample, self.num_classes[d])
        return self.label_maps[d].apply(sample)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), None)
        d, local = self.locate(index)
        size = self.sizes[d]
        skipped: list[str] = []
        for attempt in range(min(size, MAX_CONSECUTIVE_BAD)):
            try:
                sample = self._prepare(d, (local + attempt) % size)
            except DataError as err:
                if not self.skip_bad:
                    raise
                skipped.append(str(err))
                continue
            if skipped:
                sample["skipped"] = skipped
            return self.transform(sample, seed) if self.transform is not None else sample
        raise DataError(f"{self.datasets[d].describe()}: {len(skipped)} consecutive samples from index {local} are "
                        f"bad (skip_bad is on); the last: {skipped[-1]}")

    def describe(self) -> str:
        return " + ".join(f"{d.describe()} [{', '.join(t)}]" for d, t in zip(self.datasets, self.dataset_tasks))
