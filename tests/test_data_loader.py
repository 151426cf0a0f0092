"""Loaders: the dataset registry and option checks, mixing, the resumable sharded sampler, bad input and skip_bad."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from perception.data import build_dataloader, build_dataset
from perception.data.config import AugmentConfig, DataConfig, DatasetConfig
from perception.data.io import DataError, read_image
from perception.data.sampler import MixedSampler, ShardSampler, mixing_probabilities
from perception.utils.configurable import ConfigError

TASKS = ("detection", "segmentation", "depth")


def _synthetic(num=6, **kw):
    return DatasetConfig(type="synthetic", options={"num_samples": num, "height": 48, "width": 96, **kw})


def test_mixing_probabilities():
    np.testing.assert_allclose(mixing_probabilities([100, 900], "proportional"), [0.1, 0.9])
    np.testing.assert_allclose(mixing_probabilities([100, 900], "uniform"), [0.5, 0.5])
    np.testing.assert_allclose(mixing_probabilities([100, 900], "temperature", 2.0), [0.25, 0.75])
    np.testing.assert_allclose(mixing_probabilities([100, 900], "uniform", weights=[3, 1]), [0.75, 0.25])
    with pytest.raises(ValueError, match="sampling: got 'random'"):
        mixing_probabilities([1], "random")


def test_sampler_epochs_are_permutations_and_deterministic():
    sampler = MixedSampler([3, 5], seed=1)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(8))
    assert list(MixedSampler([3, 5], seed=1)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(i for i, _ in sampler) == list(range(8))
    uniform = MixedSampler([2, 10], strategy="uniform", num_samples=12)
    counts = np.bincount([i < 2 for i, _ in uniform], minlength=2)
    assert counts.tolist() == [6, 6]  # the small dataset is repeated, three times per epoch


def test_sampler_shards_and_resume():
    full = MixedSampler([7, 4], seed=3).epoch_order()
    shards = [list(MixedSampler([7, 4], seed=3, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 11 padded to 12
    interleaved = [shards[k % 3][k // 3] for k in range(12)]
    assert interleaved[:11] == [tuple(x) for x in full.tolist()] and interleaved[11] == tuple(full[0].tolist())
    resumed = MixedSampler([7, 4], seed=3, rank=1, world_size=3)
    resumed.set_start(2)
    assert list(resumed) == shards[1][2:] and len(resumed) == 2
    assert list(ShardSampler(5, 1, 2)) == [1, 3]


def test_registry_and_option_errors():
    cfg = DataConfig(train=[DatasetConfig(type="cityscape")])
    with pytest.raises(ConfigError, match="unknown dataset type 'cityscape'.*Did you mean 'cityscapes'"):
        build_dataset(cfg, "train", TASKS)
    cfg = DataConfig(train=[DatasetConfig(type="synthetic", options={"num_sample": 3})])
    with pytest.raises(ConfigError, match=r"data.train\[0\].options: unknown option 'num_sample'.*'num_samples'"):
        build_dataset(cfg, "train", TASKS)
    cfg = DataConfig(train=[DatasetConfig(type="synthetic", tasks=["depth"])])
    with pytest.raises(ConfigError, match="labels depth but the model trains segmentation"):
        build_dataset(cfg, "train", ["segmentation"])


def test_loader_batches_resume_and_workers():
    cfg = DataConfig(train=[_synthetic(6)], val=[_synthetic(3)], image_size=(48, 96), batch_size=2, num_workers=0)
    loader = build_dataloader(cfg, "train", TASKS, seed=5)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert b.images.shape == (2, 3, 64, 96) and b.images.dtype == torch.uint8  # 48 padded to 64
    semantic, depth = b.targets["segmentation"], b.targets["depth"]
    assert semantic.shape == (2, 64, 96) and (semantic[:, 48:] == 255).all() and (depth[:, 48:] == 0).all()
    assert all(v.all() for v in b.has.values()) and b.skipped == []
    loader.sampler.set_start(2)  # resume after the first batch: the same later batches, augmentation included
    resumed = list(loader)
    assert len(resumed) == 2
    for x, y in zip(resumed, batches[1:]):
        assert torch.equal(x.images, y.images) and torch.equal(x.targets["depth"], y.targets["depth"])
        assert all(torch.equal(p, q) for p, q in zip(x.targets["detection"]["boxes"], y.targets["detection"]["boxes"]))
    cfg.num_workers = 1
    with_worker = list(build_dataloader(cfg, "train", TASKS, seed=5))
    assert all(torch.equal(x.images, y.images) for x, y in zip(with_worker, batches))
    val = list(build_dataloader(cfg, "val", ["segmentation"]))
    assert sum(len(v) for v in val) == 3 and list(val[0].has) == ["segmentation"]


def _mtan(root, count=4, shape=(8, 10)):
    for sub in ("image", "label", "depth"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(root / "train" / "image" / f"{i}.npy", np.full((*shape, 3), 0.5, np.float32))
        np.save(root / "train" / "label" / f"{i}.npy", np.full(shape, i % 13, np.float32))
        np.save(root / "train" / "depth" / f"{i}.npy", np.full((*shape, 1), 1.0 + i, np.float32))
    return root


@pytest.mark.parametrize("sub,array,message", [
    ("depth", np.full((8, 10, 1), np.nan, np.float32), "depth has 80 NaN and 0 infinite values"),
    ("depth", np.full((8, 10, 1), np.inf, np.float32), "depth has 0 NaN and 80 infinite values"),
    ("depth", np.full((8, 10, 1), -1.0, np.float32), "depth has 80 negative values"),
    ("depth", np.ones((6, 10, 1), np.float32), "depth map of size 6x10 does not match the image's 8x10"),
    ("label", np.ones((8, 9), np.float32), "semantic label map of size 8x9 does not match the image's 8x10"),
    ("label", np.full((8, 10), 20, np.float32), r"semantic ids \[20\] are outside the label table \(0..12"),
])
def test_bad_samples_are_named_or_skipped(tmp_path, sub, array, message):
    _mtan(tmp_path)
    np.save(tmp_path / "train" / sub / "2.npy", array)
    cfg = DataConfig(train=[DatasetConfig(type="nyuv2_mtan", root=str(tmp_path))], image_size=(8, 10),
                     batch_size=4, num_workers=0, augment=AugmentConfig(scale=(1.0, 1.0)))
    dataset = build_dataset(cfg, "train", TASKS)
    with pytest.raises(DataError, match=f"{sub}/2.npy: {message}"):
        dataset[2]
    cfg.skip_bad = True
    batches = list(build_dataloader(cfg, "train", TASKS))
    skipped = [s for b in batches for s in b.skipped]
    assert len(skipped) == 1 and f"{sub}/2.npy: " in skipped[0] and message.split(" ")[0] in skipped[0]
    depths = sorted(float(d) for b in batches for d in b.targets["depth"][:, 0, 0])
    assert depths == [1.0, 2.0, 4.0, 4.0]  # sample 2 replaced by the next one (3: depth 4), none lost silently


def test_corrupt_and_truncated_images(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        path = tmp_path / f"a{ext}"
        cv2.imwrite(str(path), image)
        assert read_image(path).shape == (40, 50, 3)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        with pytest.raises(DataError, match=f"a\\{ext}: (truncated|cannot decode)"):
            read_image(path)
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="b.png: cannot decode the image"):
        read_image(tmp_path / "b.png")
    with pytest.raises(DataError, match="c.png: missing image file"):
        read_image(tmp_path / "c.png")


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "train" / "image").mkdir(parents=True)
    (tmp_path / "train" / "label").mkdir()
    (tmp_path / "train" / "depth").mkdir()
    cfg = DataConfig(train=[DatasetConfig(type="nyuv2_mtan", root=str(tmp_path))])
    with pytest.raises(DataError, match=r"train/image: no \*.npy files found for the train split"):
        build_dataset(cfg, "train", TASKS)


def test_mixed_tasks_masks():
    cfg = DataConfig(train=[_synthetic(2), _synthetic(2, seed=1)], image_size=(48, 96), batch_size=4, num_workers=0)
    cfg.train[1].tasks = ["depth"]
    batch = next(iter(build_dataloader(cfg, "train", TASKS)))
    from_first = torch.tensor([m["path"].endswith(("/0/0", "/0/1")) for m in batch.meta])
    assert torch.equal(batch.has["detection"], from_first) and torch.equal(batch.has["segmentation"], from_first)
    assert batch.has["depth"].all()
    assert (batch.targets["segmentation"][~from_first] == 255).all() and all(len(batch.targets["detection"]["boxes"][i]) == 0 for i in
                                                                   torch.nonzero(~from_first).flatten().tolist())


def test_semantic_class_map_across_datasets(tmp_path):
    from perception.data.datasets.nyuv2 import NYU13_CLASSES
    from perception.data.labels import cityscapes_tables

    _mtan(tmp_path, count=13)  # sample i is labelled with NYU13 class i everywhere
    city = cityscapes_tables("trainId")[1]
    union = city + [n for n in NYU13_CLASSES if n not in city and n != "tv"]
    cfg = DataConfig(train=[_synthetic(1), DatasetConfig(type="nyuv2_mtan", root=str(tmp_path),
                                                         class_map={"tv": "television", "objects": None})],
                     semantic_classes=union + ["television"], image_size=(8, 10))
    ds = build_dataset(cfg, "train", ["segmentation", "depth"])
    assert ds.classes["segmentation"][:19] == city
    got = {NYU13_CLASSES[i]: int(ds.raw(1 + i)["semantic"][1, 1]) for i in range(13)}
    assert got["wall"] == city.index("wall") == 3  # shared names merge
    assert got["bed"] == 19 and got["books"] == 20  # NYU-only classes follow the Cityscapes ones
    assert got["tv"] == len(union)  # renamed to "television"
    assert got["objects"] == 255  # dropped: ignored, not silently relabelled
    synthetic = ds.raw(0)["semantic"]
    assert synthetic.max() <= 18  # the first dataset keeps its trainIds
