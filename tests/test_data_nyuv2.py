"""NYUv2 loaders: the .mat axis order, the 894 -> 40 -> 13 mapping, the MTAN (with normals) and folder layouts."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from perception.data.batch import IGNORE_INDEX
from perception.data.datasets.nyuv2 import (NYUv2FolderDataset, NYUv2MatDataset, NYUv2MTANDataset, load_mapping,
                                            nyu_class_lut, write_nyuv2_folder)
from perception.data.io import DataError

H, W, N = 6, 8, 3


def _matlab_file(path, images, depths, labels):
    """Write arrays the way MATLAB v7.3 does: column-major, so HDF5 (and h5py) sees the axes reversed."""
    with h5py.File(path, "w") as f:
        f["images"] = images.transpose(3, 2, 1, 0)  # MATLAB [H, W, 3, N] -> stored [N, 3, W, H]
        f["depths"] = depths.transpose(2, 1, 0)  # MATLAB [H, W, N] -> [N, W, H]
        f["labels"] = labels.transpose(2, 1, 0)


@pytest.fixture()
def nyu_mat(tmp_path):
    # MATLAB-order arrays: images[H, W, 3, N] etc. A known pixel: image 1 (0-based), row 1, col 5.
    images = np.zeros((H, W, 3, N), np.uint8)
    images[1, 5, :, 1] = (10, 20, 30)
    depths = np.ones((H, W, N), np.float32)
    depths[1, 5, 1] = 4.5
    labels = np.zeros((H, W, N), np.uint16)
    labels[1, 5, 1] = 3  # raw class 3
    labels[2, 2, 1] = 894
    _matlab_file(tmp_path / "nyu_depth_v2_labeled.mat", images, depths, labels)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3]])})
    # 894 -> 40: raw c -> (c % 40) + 1, except raw 3 -> 0 (unlabelled); 40 -> 13: c -> (c % 13) + 1.
    map40 = (np.arange(1, 895) % 40) + 1
    map40[2] = 0
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": map40[None, :].astype(np.float64)})
    np.savetxt(tmp_path / "map13.txt", (np.arange(1, 41) % 13) + 1, fmt="%d")
    return tmp_path


def test_mat_axis_order_and_split(nyu_mat):
    ds = NYUv2MatDataset(nyu_mat, "train", classes=894)
    assert len(ds) == 2 and len(NYUv2MatDataset(nyu_mat, "test", classes=894)) == 1
    s = ds.load(1)  # trainNdxs[1] = 2 (1-based) -> image 1
    assert s["image"].shape == (H, W, 3)
    assert s["image"][1, 5].tolist() == [10, 20, 30] and s["image"].sum() == 60
    assert s["depth"].shape == (H, W) and s["depth"][1, 5] == 4.5 and s["depth"][0, 0] == 1.0
    assert s["semantic"][1, 5] == 2 and s["semantic"][2, 2] == 893 and s["semantic"][0, 0] == IGNORE_INDEX


def test_894_to_40_to_13(nyu_mat):
    lut40 = nyu_class_lut(40, nyu_mat / "classMapping40.mat", None)
    lut13 = nyu_class_lut(13, nyu_mat / "classMapping40.mat", nyu_mat / "map13.txt")
    assert lut40[0] == IGNORE_INDEX and lut13[0] == IGNORE_INDEX
    assert lut40[3] == IGNORE_INDEX and lut13[3] == IGNORE_INDEX  # mapped to 0 = unlabelled
    for raw in (1, 2, 39, 40, 41, 500, 894):
        c40 = (raw % 40) + 1
        assert lut40[raw] == c40 - 1
        assert lut13[raw] == (c40 % 13)  # (c40 % 13) + 1, 0-based
    ds = NYUv2MatDataset(nyu_mat, "train", classes=13, mapping_40=str(nyu_mat / "classMapping40.mat"),
                         mapping_13=str(nyu_mat / "map13.txt"))
    s = ds.load(1)
    assert s["semantic"][1, 5] == IGNORE_INDEX and s["semantic"][2, 2] == (((894 % 40) + 1) % 13)
    assert ds.classes["segmentation"][0] == "bed" and len(ds.classes["segmentation"]) == 13


def test_mapping_errors(nyu_mat):
    np.save(nyu_mat / "short.npy", np.arange(10))
    with pytest.raises(DataError, match=r"short.npy: expected a 894 -> 40 class mapping of 894 values, found 10"):
        load_mapping(nyu_mat / "short.npy", 894, "894 -> 40 class mapping")
    with pytest.raises(ValueError, match="needs the option mapping_40"):
        NYUv2MatDataset(nyu_mat, "train", classes=40)
    with pytest.raises(DataError, match="missing NYUv2 splits.mat file"):
        NYUv2MatDataset(nyu_mat / "nyu_depth_v2_labeled.mat", "train", classes=894, splits=str(nyu_mat / "no.mat"))


def test_mtan_layout(tmp_path):
    for sub in ("image", "label", "depth", "normal"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i in range(3):
        image = np.full((4, 5, 3), i / 10, np.float32)
        label = np.full((4, 5), i, np.float32)
        label[0, 0] = -1
        depth = np.full((4, 5, 1), 1.5 + i, np.float32)
        for sub, arr in (("image", image), ("label", label), ("depth", depth), ("normal", image)):
            np.save(tmp_path / "train" / sub / f"{i}.npy", arr)
    ds = NYUv2MTANDataset(tmp_path, "train")
    assert len(ds) == 3
    s = ds.load(2)
    assert s["image"].dtype == np.uint8 and s["image"][0, 0].tolist() == [51, 51, 51]  # 0.2 * 255
    assert s["semantic"][0, 0] == IGNORE_INDEX and s["semantic"][1, 1] == 2
    assert s["depth"].shape == (4, 5) and s["depth"][0, 0] == 3.5
    (tmp_path / "train" / "label" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"label/1.npy: missing label file"):
        ds.load(1)
    with pytest.raises(DataError, match="val: missing split folder"):
        NYUv2MTANDataset(tmp_path, "val")


def _mtan_split(root, normal, count=1, h=4, w=5):
    for sub in ("image", "label", "depth", "normal"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(root / "train" / "image" / f"{i}.npy", np.zeros((h, w, 3), np.float32))
        np.save(root / "train" / "label" / f"{i}.npy", np.zeros((h, w), np.float32))
        np.save(root / "train" / "depth" / f"{i}.npy", np.ones((h, w, 1), np.float32))
        np.save(root / "train" / "normal" / f"{i}.npy", normal)


def test_mtan_normals_are_read_and_zeros_mark_no_normal(tmp_path):
    normal = np.zeros((4, 5, 3), np.float32)
    normal[..., 2] = -1.0
    normal[1, 1] = (0.6, -0.8, 0.0)                       # unit, components summing to non-zero
    normal[2, 2] = (0.3, 0.0, 0.4)                        # stored shorter than unit: rescaled to (0.6, 0, 0.8)
    normal[0, :2] = 0.0                                   # no normal
    _mtan_split(tmp_path, normal)
    ds = NYUv2MTANDataset(tmp_path, "train")
    assert ds.tasks == ("segmentation", "depth", "normals")   # normal/ exists: loaded by default
    s = ds.load(0)
    n = s["normals"]
    assert n.shape == (4, 5, 3) and n.dtype == np.float32 and s["meta"]["files"]["normals"].endswith("0.npy")
    np.testing.assert_array_equal(n[0, :2], 0.0)
    np.testing.assert_allclose(n[1, 1], (0.6, -0.8, 0.0), atol=1e-6)
    np.testing.assert_allclose(n[2, 2], (0.6, 0.0, 0.8), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1)[n.any(-1)], 1.0, atol=1e-6)
    assert "normals" not in NYUv2MTANDataset(tmp_path, "train", tasks=["segmentation", "depth"]).load(0)
    # Through the pipeline: the zeros are the invalid pixels the normals task skips.
    from perception.data.batch import collate
    from perception.tasks.normals.loss import valid_normals

    batch = collate([s], size_divisor=8, labels=["normals"])
    assert valid_normals(batch.targets["normals"])[0, :4, :5].sum() == 4 * 5 - 2


def test_mtan_without_a_normal_folder_and_bad_normal_files(tmp_path):
    _mtan_split(tmp_path, np.zeros((4, 5, 3), np.float32))
    for bad, message in ((np.zeros((5, 4, 3), np.float32), r"normal/0.npy: expected H x W x 3 normals matching "
                          r"the image's 4x5, got shape \(5, 4, 3\)"),
                         (np.zeros((3, 4, 5), np.float32), r"normal/0.npy: expected H x W x 3"),
                         (np.zeros((4, 5, 3), np.int64), r"normal/0.npy: normals are int64, expected floats"),
                         (np.full((4, 5, 3), np.nan, np.float32), r"normal/0.npy: normals have NaN"),
                         (np.full((4, 5, 3), 255.0, np.float32), r"normal/0.npy: normal components reach 255")):
        np.save(tmp_path / "train" / "normal" / "0.npy", bad)
        with pytest.raises(DataError, match=message):
            NYUv2MTANDataset(tmp_path, "train", tasks=["normals"]).load(0)
    (tmp_path / "train" / "normal" / "0.npy").unlink()
    (tmp_path / "train" / "normal").rmdir()
    assert NYUv2MTANDataset(tmp_path, "train").tasks == ("segmentation", "depth")   # as before normals
    with pytest.raises(DataError, match="normal: missing normal folder"):
        NYUv2MTANDataset(tmp_path, "train", tasks=["segmentation", "normals"])


def test_folder_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    semantic = rng.integers(0, 13, (6, 7))
    depth = rng.uniform(0.5, 9.0, (6, 7)).astype(np.float32)
    depth[0, 0] = 0
    write_nyuv2_folder(tmp_path / "val", "0001", image, semantic, depth)
    s = NYUv2FolderDataset(tmp_path, "val").load(0)
    np.testing.assert_array_equal(s["image"], image)
    np.testing.assert_array_equal(s["semantic"], semantic)
    np.testing.assert_allclose(s["depth"], np.round(depth * 1000) / 1000, atol=1e-6)
    assert s["depth"][0, 0] == 0


def test_prepare_script_mat_to_folder(nyu_mat, tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "datasets" / "prepare_nyuv2.py"
    spec = importlib.util.spec_from_file_location("prepare_nyuv2", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "folder"
    module.main(["--mat", str(nyu_mat / "nyu_depth_v2_labeled.mat"), "--classes", "40", "--mapping-40",
                 str(nyu_mat / "classMapping40.mat"), "--out", str(out)])
    ds = NYUv2FolderDataset(out, "train", classes=40)
    assert len(ds) == 2 and len(NYUv2FolderDataset(out, "val", classes=40)) == 1
    s = ds.load(1)  # image 2 of the .mat (1-based), written as 0002.png
    assert s["meta"]["path"].endswith("0002.png")
    assert s["image"][1, 5].tolist() == [10, 20, 30] and s["depth"][1, 5] == 4.5
    assert s["semantic"][1, 5] == IGNORE_INDEX and s["semantic"][2, 2] == 894 % 40 and s["semantic"][0, 0] == 255
    with pytest.raises(ValueError, match="at most 255 classes"):
        write_nyuv2_folder(out, "x", s["image"], np.full((6, 8), 300), None)
