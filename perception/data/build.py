"""From a ``DataConfig`` to datasets and loaders: the dataset registry, option checks, the mix and its sampler.

    dataset = build_dataset(cfg.data, "train", tasks=("detection", "segmentation", "depth"))
    loader = build_dataloader(cfg.data, "train", tasks, distributed=False, seed=0)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader: ...  # perception.data.Batch

The registry maps ``DatasetConfig.type`` to a dataset class; a dataset's ``options`` are checked against its
constructor's signature, so a misspelt option is an error naming the closest valid one.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from perception.data.batch import IGNORE_INDEX, LABEL_KEYS, collate
from perception.data.config import DataConfig, DatasetConfig
from perception.data.datasets.base import BaseDataset
from perception.data.labels import LABEL_TASKS, build_label_map
from perception.data.mixed import MixedDataset
from perception.data.sampler import MixedSampler, ShardSampler, distributed_rank_world
from perception.data.transforms import JointTransform
from perception.utils.configurable import ConfigError

# type -> "module:Class"; imported on first use so that a dataset's optional dependencies load only when used.
DATASETS: dict[str, str] = {
    "synthetic": "perception.data.datasets.synthetic:SyntheticDrivingDataset",
    "cityscapes": "perception.data.datasets.cityscapes:CityscapesDataset",
    "nyuv2_mat": "perception.data.datasets.nyuv2:NYUv2MatDataset",
    "nyuv2_mtan": "perception.data.datasets.nyuv2:NYUv2MTANDataset",
    "nyuv2_folder": "perception.data.datasets.nyuv2:NYUv2FolderDataset",
    "coco": "perception.data.datasets.coco:COCODetectionDataset",
    "bdd100k": "perception.data.datasets.bdd100k:BDD100KDataset",
}
SPLITS = ("train", "val")


def register_dataset(name: str, target: str | type) -> None:
    """Add a dataset type: ``target`` is a ``BaseDataset`` subclass or its ``"module:Class"`` path."""
    DATASETS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def dataset_class(name: str) -> type[BaseDataset]:
    """The class registered for ``DatasetConfig.type`` ``name``."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"data: unknown dataset type {name!r}; expected one of {', '.join(DATASETS)}.{hint}")
    module, _, attr = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def check_options(cls: type, options: dict, where: str) -> None:
    """Raise ConfigError for an option that ``cls``'s constructor does not take (naming the closest one)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n not in ("self", "root", "split", "tasks")]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}.options: unknown option {key!r} of dataset {cls.__name__} "
                              f"(valid: {', '.join(valid) or 'none'}).{hint}")


def make_dataset(ds_cfg: DatasetConfig, where: str = "data", tasks: Sequence[str] | None = None) -> BaseDataset:
    """The raw dataset described by one ``DatasetConfig``.

    Args:
        ds_cfg: its configuration.
        where: its place in the config, for error messages.
        tasks: the tasks the model trains; a dataset whose constructor takes ``tasks`` loads (and requires the
            files of) only these and those of ``ds_cfg.tasks``.
    """
    cls = dataset_class(ds_cfg.type)
    check_options(cls, ds_cfg.options, where)
    options = dict(ds_cfg.options)
    if "tasks" in inspect.signature(cls.__init__).parameters and "tasks" not in options and tasks is not None:
        wanted = [t for t in LABEL_KEYS if t in tasks and (not ds_cfg.tasks or t in ds_cfg.tasks)]
        options["tasks"] = wanted or list(ds_cfg.tasks)
    return cls(ds_cfg.root, ds_cfg.split, **options)


def _dataset_tasks(dataset: BaseDataset, ds_cfg: DatasetConfig, tasks: Sequence[str], where: str) -> tuple[str, ...]:
    for task in ds_cfg.tasks:
        if task not in LABEL_KEYS:
            raise ConfigError(f"{where}.tasks: unknown task {task!r}; expected some of {', '.join(LABEL_KEYS)}")
        if task not in dataset.tasks:
            raise ConfigError(f"{where}.tasks: {dataset.describe()} has no {task} labels (it labels "
                              f"{', '.join(dataset.tasks)})")
    wanted = ds_cfg.tasks or dataset.tasks
    kept = tuple(t for t in LABEL_KEYS if t in wanted and t in tasks)
    if not kept:
        raise ConfigError(f"{where}: {dataset.describe()} labels {', '.join(wanted)} but the model trains "
                          f"{', '.join(tasks)}: it would contribute nothing")
    return kept


def _mix_classes(datasets: Sequence[BaseDataset], tasks: Sequence[tuple[str, ...]], data_cfg: DataConfig,
                 cfgs: Sequence[DatasetConfig]) -> dict[str, list[str]]:
    """The class names of the mix per task: the configured ones, else those of the first dataset labelling the
    task (after its ``class_map``); the other datasets map onto them by name (checked by ``build_label_map``)."""
    configured = {"detection": list(data_cfg.detection_classes), "segmentation": list(data_cfg.semantic_classes)}
    out = {}
    for task in LABEL_TASKS:
        if configured[task]:
            out[task] = configured[task]
            continue
        users = [(d, c) for d, t, c in zip(datasets, tasks, cfgs) if task in t]
        if not users:
            continue
        first, cfg = users[0]
        names = [cfg.class_map.get(n, n) for n in first.classes.get(task, [])]
        names = list(dict.fromkeys(n for n in names if n is not None))  # renames may merge classes
        if len(users) > 1 or cfg.class_map:
            out[task] = names
    return out


def build_dataset(data_cfg: DataConfig, split: str, tasks: Sequence[str]) -> MixedDataset:
    """The transformed dataset of ``split``.

    Args:
        data_cfg: the data configuration.
        split: ``train`` (the ``data.train`` mix, random augmentation) or ``val`` (``data.val``, the evaluation
            resize that fits images into ``data.image_size`` keeping their aspect ratio).
        tasks: the model's tasks; other labels are dropped.

    Returns:
        A :class:`MixedDataset` whose items are samples of tensors (image Tensor[3, H, W] uint8, ...). It exposes
        ``tasks`` (the tasks some dataset labels), ``classes`` (task -> class names of the mix) and ``sizes``.

    Raises:
        ConfigError: an unknown dataset type or option, a dataset that labels none of ``tasks``, a class that maps
            onto no class of the mix.
        DataError: a dataset folder that is missing, empty or laid out differently than expected.
    """
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}, expected 'train' or 'val'")
    for task in tasks:
        if task not in LABEL_KEYS:
            raise ConfigError(f"tasks: unknown task {task!r}; expected some of {', '.join(LABEL_KEYS)}")
    cfgs = data_cfg.train if split == "train" else data_cfg.val
    if not cfgs:
        raise ConfigError(f"data.{split}: no datasets configured")
    wheres = [f"data.{split}[{i}]" for i in range(len(cfgs))]
    datasets = [make_dataset(c, w, tasks) for c, w in zip(cfgs, wheres)]
    ds_tasks = [_dataset_tasks(d, c, tasks, w) for d, c, w in zip(datasets, cfgs, wheres)]
    classes = _mix_classes(datasets, ds_tasks, data_cfg, cfgs)
    label_maps, num_classes = [], []
    for d, c, t, w in zip(datasets, cfgs, ds_tasks, wheres):
        native = {task: d.classes.get(task, []) for task in LABEL_TASKS if task in t}
        if len(native.get("segmentation", ())) > IGNORE_INDEX:
            raise ConfigError(f"{w}: {d.describe()} has {len(native['segmentation'])} semantic classes; training "
                              f"takes at most {IGNORE_INDEX} (id {IGNORE_INDEX} means ignore): use a coarser level")
        label_maps.append(build_label_map(native, {k: v for k, v in classes.items() if k in t}, c.class_map,
                                          f"{w} ({d.describe()})"))
        num_classes.append({task: len(names) for task, names in native.items() if names})
    transform = JointTransform(data_cfg.image_size, train=split == "train", augment=data_cfg.augment,
                               labels=[t for t in LABEL_KEYS if any(t in ts for ts in ds_tasks)])
    mixed = MixedDataset(datasets, ds_tasks, label_maps, num_classes, transform, skip_bad=data_cfg.skip_bad)
    # A task the mix does not rename keeps the native ids of the one dataset labelling it: its names. Labels of a
    # dataset's own (drivable area, lanes) are never renamed: their names are those of the first dataset.
    first_names: dict[str, list[str]] = {}
    for d, t in zip(datasets, ds_tasks):
        for task in t:
            if task in d.classes:
                first_names.setdefault(task, list(d.classes[task]))
    mixed.classes = {task: classes.get(task) or first_names.get(task, []) for task in mixed.tasks
                     if task in classes or task in first_names}
    mixed.weights = [c.weight for c in cfgs]
    return mixed


def build_dataloader(data_cfg: DataConfig, split: str, tasks: Sequence[str], *, distributed: bool = False,
                     seed: int = 0) -> DataLoader:
    """A DataLoader of :class:`~perception.data.batch.Batch` over ``build_dataset(data_cfg, split, tasks)``.

    Training uses a :class:`~perception.data.sampler.MixedSampler` (deterministic given ``seed`` and the epoch;
    ``loader.sampler.set_epoch(e)`` / ``set_start(i)``; shards by rank under torch.distributed) and drops the last
    incomplete batch; evaluation visits every sample once, sharded by rank without padding.

    Args:
        data_cfg: the data configuration.
        split: ``train`` or ``val``.
        tasks: the model's tasks.
        distributed: shard by the torch.distributed rank (when a process group is initialised).
        seed: of the training order and augmentation.
    """
    dataset = build_dataset(data_cfg, split, tasks)
    rank, world = distributed_rank_world(distributed)
    if split == "train":
        sampler = MixedSampler(dataset.sizes, data_cfg.sampling, data_cfg.temperature, dataset.weights,
                               data_cfg.samples_per_epoch or None, seed=seed, rank=rank, world_size=world)
        drop_last = sampler.per_rank >= data_cfg.batch_size
    else:
        sampler, drop_last = ShardSampler(len(dataset), rank, world), False
    workers = data_cfg.num_workers
    return DataLoader(dataset, batch_size=data_cfg.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=functools.partial(collate, size_divisor=data_cfg.size_divisor, labels=list(tasks)),
                      pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
