"""The network: shapes for several timm backbones, gradients, task subsets, backbone options, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torchvision.ops import FrozenBatchNorm2d

from perception.config import ConfigError, load_config
from perception.data import collate
from perception.models import TimmBackbone, build_model
from perception.tasks.detection import FCOSHead
from perception.tasks.segmentation import SegmentationHead
from perception.models.config import ModelConfig
from perception.mtl import UncertaintyWeighting
from perception.utils.configurable import from_dict
from scenes import toy_scene

SMALL = {"neck": {"channels": 32}, "segmentation": {"channels": 32}, "depth": {"channels": 32},
         "detection": {"num_convs": 1}}


def small_model(backbone: str = "test_resnet", **overrides):
    data = {**SMALL, "backbone": {"name": backbone}, **overrides}
    return build_model(from_dict(ModelConfig, data))


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto",
                                      "regnety_002"])
def test_output_shapes_at_size_not_multiple_of_32(backbone):
    torch.manual_seed(0)
    model = small_model(backbone).eval()
    height, width = 250, 380
    images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        pyramid = model.forward_features(images)
        outputs = model.forward_heads(pyramid)
        preds = model.postprocess(outputs, (height, width))

    # Channels come from timm's feature_info, strides are 4..128.
    info = timm.create_model(backbone, features_only=True, out_indices=(-4, -3, -2, -1)).feature_info
    assert model.backbone.out_channels == tuple(info.channels())
    assert model.neck.strides == (4, 8, 16, 32, 64, 128)
    assert [p.shape[1] for p in pyramid] == [32] * 6
    # Padding conventions differ (a ConvNeXt patchify stem floors, a ResNet stem rounds up).
    assert all(abs(n - size / 4) <= 1 for n, size in zip(pyramid[0].shape[-2:], (height, width)))

    det = outputs["detection"]
    num_locations = sum(p.shape[-2] * p.shape[-1] for p in pyramid[1:])
    assert det["cls_logits"].shape == (2, num_locations, 8) and det["cls_logits"].dtype == torch.float32
    assert det["box_regression"].shape == (2, num_locations, 4)
    assert det["centerness"].shape == (2, num_locations)
    assert (det["box_regression"] >= 0).all()
    assert outputs["segmentation"].shape == (2, 19, *pyramid[0].shape[-2:])
    assert outputs["depth"].shape == (2, 1, *pyramid[0].shape[-2:])

    assert preds["segmentation"].shape == (2, height, width) and preds["segmentation"].dtype == torch.int64
    assert preds["depth"].shape == (2, height, width) and preds["depth"].dtype == torch.float32
    assert torch.isfinite(preds["depth"]).all() and (preds["depth"] > 0).all()
    for det_per_image in preds["detection"]:
        boxes = det_per_image["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) <= 100
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all() and (boxes >= 0).all()


def test_every_parameter_gets_a_finite_gradient_including_log_variances():
    torch.manual_seed(0)
    model = small_model(detection={"num_classes": 2, "num_convs": 1}, segmentation={"num_classes": 4,
                                                                                     "channels": 32})
    weighting = UncertaintyWeighting(model.tasks)
    rng = np.random.default_rng(0)
    # Boxes big and small enough to give positives on every detection level P3..P7.
    samples = [toy_scene(rng, 256, 256, num_objects=2) for _ in range(2)]
    samples[0]["boxes"] = np.array([[0, 0, 250, 250], [10, 10, 40, 40]], np.float32)
    samples[1]["boxes"] = np.array([[0, 0, 120, 110], [130, 20, 200, 90]], np.float32)
    batch = collate(samples)
    outputs = model(batch.images)
    task_losses, _ = model.compute_losses(outputs, batch)
    loss, _ = weighting(task_losses, batch.present())
    loss.backward()
    params = list(model.named_parameters()) + [("weighting." + n, p) for n, p in weighting.named_parameters()]
    assert len(params) > 50
    for name, param in params:
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    for task in model.tasks:
        assert weighting.log_vars[task].grad.abs() > 0


@pytest.mark.parametrize("tasks", [["detection"], ["segmentation"], ["depth"], ["segmentation", "depth"],
                                   ["depth", "detection"]])
def test_any_subset_of_tasks_is_the_same_model_with_fewer_heads(tasks):
    model = small_model(tasks=tasks)
    assert set(model.tasks) == set(tasks)
    outputs = model(torch.zeros(1, 3, 64, 96))
    assert set(outputs) == set(tasks)
    # P6/P7 only exist when detection needs them.
    assert len(model.neck.strides) == (6 if "detection" in tasks else 4)
    full = small_model()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())


def test_run_only_requested_heads():
    model = small_model().eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64), tasks=["depth"])
    assert list(outputs) == ["depth"]
    with pytest.raises(ValueError, match="'depth_map' is not in this model"):
        model(torch.zeros(1, 3, 64, 64), tasks=["depth_map"])


def test_freeze_at_freezes_stem_and_first_stages_and_their_batchnorm_statistics():
    backbone = TimmBackbone("resnet18", freeze_at=2)
    frozen = {n for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.bias"} <= frozen
    assert all(not n.startswith(("layer2", "layer3", "layer4")) for n in frozen)
    assert all(n.startswith(("conv1", "bn1", "layer1")) for n in frozen)
    stats_before = backbone.body.bn1.running_mean.clone()
    layer2_before = backbone.body.layer2[0].bn1.running_mean.clone()
    backbone.train()
    backbone(torch.rand(2, 3, 64, 64) * 255)
    assert torch.equal(backbone.body.bn1.running_mean, stats_before)          # frozen: statistics fixed
    assert not torch.equal(backbone.body.layer2[0].bn1.running_mean, layer2_before)  # trained: they move

    stem_only = TimmBackbone("convnext_atto", freeze_at=1)
    frozen = {n for n, p in stem_only.body.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("stem") for n in frozen)


def test_frozen_batchnorm_replaces_every_batchnorm():
    backbone = TimmBackbone("resnet18", frozen_bn=True)
    modules = list(backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) == 20


def test_pretrained_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18")
    path = tmp_path / "resnet18_weights.pth"
    torch.save(reference.state_dict(), path)
    backbone = TimmBackbone("resnet18", pretrained=str(path))
    assert torch.equal(backbone.body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(backbone.body.bn1.running_var, reference.bn1.running_var)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmBackbone("resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_download_failure_names_the_local_file_option(monkeypatch):
    real_create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise ConnectionError("no route to host")
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(RuntimeError, match="local file path"):
        TimmBackbone("resnet18", pretrained=True)


def test_bad_backbone_name_lists_closest_timm_names():
    with pytest.raises(ValueError, match="unknown timm model 'resnt18'.*resnet18"):
        TimmBackbone("resnt18")


def test_backbone_without_stride_32_pyramid_is_refused():
    with pytest.raises(ValueError, match=r"strides \(16, 16, 16, 16\)"):
        TimmBackbone("test_vit")


def test_unknown_task_and_zero_classes_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown task type 'segmantation'.*Did you mean 'segmentation'"):
        load_config(None, ["model.tasks=[detection, segmantation]"])
    with pytest.raises(ConfigError, match="num_classes: got 0, expected at least 1"):
        load_config(None, ["model.detection.num_classes=0"])
    with pytest.raises(ValueError, match="num_classes: got 0"):
        FCOSHead(32, num_classes=0)
    with pytest.raises(ValueError, match="num_classes: got 0"):
        SegmentationHead(32, num_classes=0)
    with pytest.raises(ConfigError, match="tasks: got an empty list"):
        load_config(None, ["model.tasks=[]"])


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 4, 64, 64), (3, 64, 64)])
def test_input_that_is_not_three_channel_rgb_is_refused(shape):
    model = small_model()
    with pytest.raises(ValueError, match=r"expected a Tensor\[B, 3, H, W\].*" + str(tuple(shape)).replace("(", r"\(")
                       .replace(")", r"\)")):
        model(torch.zeros(shape))
