"""Model scales (``model.scale: n | s | m | l``) and the light head options they are made of."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.config import ConfigError, load_config
from perception.data.batch import collate
from perception.models import build_model
from perception.models.config import SCALES
from perception.ops.geometry import Letterbox
from perception.ops.layers import conv_gn_relu, dwsep_gn_relu
from perception.tasks import TASK_TYPES
from scenes import toy_scene

TWO_SEGMENTATIONS = ("model.tasks={objects: {type: detection, num_classes: 3}, "
                     "semantic: {type: segmentation, num_classes: 4}, "
                     "drivable: {type: segmentation, num_classes: 3, label: drivable}, depth: {type: depth}}")


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(overrides: list[str]):
    cfg = load_config(None, overrides)
    with torch.device("meta"):  # shapes only: no weights initialised, no time spent
        return cfg, build_model(cfg.model)


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_scale_builds_for_the_list_and_a_mapping_with_two_segmentations(scale):
    cfg, model = _meta_model([f"model.scale={scale}"])
    assert cfg.model.backbone.name == SCALES[scale]["backbone"]["name"]
    assert model.neck.out_channels == SCALES[scale]["neck"]["channels"]
    assert cfg.model.neck.conv == SCALES[scale]["neck"].get("conv", "conv")
    separable = cfg.model.neck.conv == "dwsep"
    assert all((block[0].groups == model.neck.out_channels) == separable for block in model.neck.fpn.layer_blocks)
    for name, task in cfg.model.build_tasks().items():  # each task got its type's preset
        for key, value in type(task).SCALES[scale].items():
            assert getattr(task.cfg, key) == value, (name, key)
    cfg, model = _meta_model([f"model.scale={scale}", TWO_SEGMENTATIONS])
    specs = cfg.model.build_tasks()
    assert model.tasks == ["objects", "semantic", "drivable", "depth"]
    for name in ("semantic", "drivable"):
        assert specs[name].cfg.channels == TASK_TYPES["segmentation"].SCALES[scale]["channels"]
    assert specs["drivable"].num_classes == 3 and specs["objects"].num_classes == 3  # the entries' own keys
    assert model.heads["drivable"].predictor.out_channels == 3
    # A listed type without a section of its own in ModelConfig takes its preset too.
    cfg, model = _meta_model([f"model.scale={scale}", "model.tasks=[segmentation, normals]"])
    assert cfg.model.build_tasks()["normals"].cfg.stride == TASK_TYPES["normals"].SCALES[scale]["stride"]
    assert model.heads["normals"].branch.stride == TASK_TYPES["normals"].SCALES[scale]["stride"]


def test_parameters_strictly_increase_from_n_to_l():
    counts = [_params(_meta_model([f"model.scale={s}"])[1]) for s in ("n", "s", "m", "l")]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_the_small_scales_compute_no_p2_and_no_p6_p7():
    _, model = _meta_model(["model.scale=n"])
    assert model.neck.strides == (8, 16, 32)
    assert len(model.neck.fpn.inner_blocks) == 3 and model.neck.fpn.extra_blocks is None
    assert model.heads["detection"].strides == (8, 16, 32)


@pytest.mark.parametrize("scale", ["m", "l"])
def test_the_large_scales_compute_p2_for_the_dense_heads_and_detect_on_p3_to_p5(scale):
    _, model = _meta_model([f"model.scale={scale}"])
    assert model.neck.strides == (4, 8, 16, 32) and model.neck.fpn.extra_blocks is None
    assert model.heads["detection"].strides == (8, 16, 32)
    assert model.heads["segmentation"].branch.stride == 4 and model.heads["depth"].branch.stride == 4
    # depth's branch is narrower than segmentation's at m (one smooth channel against 19 classes)
    widths = {t: model.heads[t].branch.out_channels for t in ("segmentation", "depth")}
    assert widths == ({"segmentation": 64, "depth": 32} if scale == "m" else {"segmentation": 96, "depth": 96})


def test_explicit_keys_override_the_preset_from_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model:\n  scale: s\n  neck: {channels: 40}\n  segmentation: {stride: 4}\n", encoding="utf-8")
    (tmp_path / "child.yaml").write_text(
        "_base_: base.yaml\nmodel:\n  detection: {num_convs: 3}\n  backbone: {name: resnet18}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "child.yaml", ["model.depth.channels=24"])
    m = cfg.model
    assert m.scale == "s"
    assert m.neck.channels == 40 and m.segmentation.stride == 4            # from the _base_ file
    assert m.detection.num_convs == 3 and m.backbone.name == "resnet18"    # from the child
    assert m.depth.channels == 24                                          # from the override
    # Everything not given comes from the preset.
    assert m.neck.prune is True and m.detection.tower == "dwsep" and m.detection.max_stride == 32
    assert m.segmentation.channels == 64 and m.depth.stride == 8
    # An override can change the scale the files chose; the files' explicit keys still win.
    m = load_config(tmp_path / "child.yaml", ["model.scale=l"]).model
    assert m.neck.channels == 40 and m.backbone.name == "resnet18" and m.detection.num_convs == 3
    assert m.neck.conv == "dwsep" and m.neck.prune is True  # l's neck keys beside the file's channels
    assert m.depth.channels == TASK_TYPES["depth"].SCALES["l"]["channels"]


def test_no_scale_is_the_explicit_settings_and_a_resolved_config_round_trips(tmp_path):
    assert load_config(None, ["model.scale=null"]) == load_config(None)
    from perception.config import config_from_dict, config_to_dict

    cfg = load_config(None, ["model.scale=m", "model.neck.channels=48"])
    assert config_from_dict(config_to_dict(cfg)) == cfg  # a checkpoint's config rebuilds the same network


def test_unknown_scale_is_a_one_line_error_naming_the_key_and_the_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.scale=xl"])
    message = str(err.value)
    assert "\n" not in message and "model.scale" in message and "'xl'" in message
    assert "n, s, m, l" in message
    from perception.models.config import resolved_model_config  # a checkpoint's section is checked the same way

    with pytest.raises(ConfigError, match=r"model\.scale: got 'xl', expected one of n, s, m, l"):
        resolved_model_config({"scale": "xl"})
    assert resolved_model_config({"scale": "s"}).neck.channels == 256  # as stored: no preset merged


def test_scale_n_trains_a_step_on_a_tiny_batch():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.scale=n"])
    model = build_model(cfg.model).train()
    batch = collate([toy_scene(np.random.default_rng([3, i]), 64, 96) for i in range(2)])
    outputs = model(batch.images)
    assert outputs["segmentation"].shape == (2, 19, 8, 12)                 # stride 8
    assert outputs["detection"]["cls_logits"].shape[1] == 8 * 12 + 4 * 6 + 2 * 3
    losses, _ = model.compute_losses(outputs, batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    for name in model.tasks:  # every head and the trunk got a gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task_parameters(name)), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    predictions = model.eval().postprocess(model.eval()(batch.images), (64, 96))
    assert predictions["segmentation"].shape == (2, 64, 96) and predictions["depth"].shape == (2, 64, 96)


def test_dwsep_unit_has_the_shape_and_far_fewer_weights_of_a_dense_conv():
    x = torch.randn(2, 64, 9, 7)
    dense, separable = conv_gn_relu(64, 48), dwsep_gn_relu(64, 48)
    assert separable(x).shape == dense(x).shape == (2, 48, 9, 7)
    conv_weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if p.ndim == 4)  # noqa: E731
    assert conv_weights(separable) == 64 * 9 + 64 * 48 and conv_weights(dense) == 64 * 48 * 9


@pytest.mark.parametrize("tower", ["conv", "dwsep"])
def test_detection_on_p3_p5_decodes_the_same_in_torch_and_numpy(tower):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone.name=test_resnet", "model.neck.channels=16", "model.neck.prune=true",
                             "model.tasks=[detection]", f"model.detection.tower={tower}",
                             "model.detection.max_stride=32", "model.detection.num_classes=3",
                             "model.detection.num_convs=1"])
    model = build_model(cfg.model).eval()
    assert model.neck.strides == (8, 16, 32)
    task, head = model.task_specs["detection"], model.heads["detection"]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96) * 255)["detection"]
        # Deterministic, well-separated scores so that both decodes keep the same candidates.
        out["cls_logits"] = torch.linspace(-3, 3, out["cls_logits"].numel()).reshape(out["cls_logits"].shape)
        assert out["cls_logits"].shape == (1, 8 * 12 + 4 * 6 + 2 * 3, 3)
        assert out["num_per_level"] == (96, 24, 6)
        torch_det = task.postprocess(head, out, (64, 96), score_thresh=0.3)[0]
        exported = {k: v[0].numpy() for k, v in task.export_outputs(head, out).items()}
    box = Letterbox(64, 96, 64, 96, 64, 96)
    numpy_det = task.decode_numpy(exported, box, score_thresh=0.3, **task.export_metadata(head))
    assert task.export_metadata(head) == {"strides": [8, 16, 32]}
    assert len(torch_det["boxes"]) > 0
    np.testing.assert_allclose(numpy_det["boxes"], torch_det["boxes"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(numpy_det["labels"], torch_det["labels"].numpy())


@pytest.mark.parametrize("type_name", ["segmentation", "depth", "normals"])
def test_dense_branch_at_stride_8_reads_p3_p5_and_predicts_at_input_size(type_name):
    cfg = load_config(None, ["model.backbone.name=test_resnet", "model.neck.channels=16", "model.neck.prune=true",
                             f"model.tasks={{a: {{type: {type_name}, stride: 8, conv: dwsep, channels: 8}}}}"])
    model = build_model(cfg.model).eval()
    assert model.neck.strides == (8, 16, 32)
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96) * 255)["a"]
        assert raw.shape[-2:] == (8, 12)
        pred = model.postprocess({"a": raw}, (64, 96))["a"]
    assert tuple(pred.shape[1:3]) == (64, 96)


@pytest.mark.parametrize("strides,conv", [((4, 8, 16, 32), "dwsep"), ((8, 16, 32), "conv")])
def test_dense_branch_upsamples_the_coarse_levels_once_with_the_values_of_one_resize_each(strides, conv):
    """The branch sums P3..P5 (P4..P5) before their shared last upsampling: the same map as resizing each level's
    output to the finest size and summing (odd sizes, where the sizes of the levels do not halve exactly)."""
    import torch.nn.functional as F
    from perception.ops.dense import SemanticFPNBranch

    torch.manual_seed(0)
    branch = SemanticFPNBranch(6, 8, strides, conv).eval()
    sizes = [(25, 33), (13, 17), (7, 9), (4, 5)][:len(strides)]
    features = [torch.randn(2, 6, *size) for size in sizes]
    with torch.no_grad():
        out = branch(features)
        reference = branch.scales[0](features[0], [])
        for level in range(1, len(strides)):
            y = branch.scales[level](features[level], sizes[:level][::-1])  # each resized to the finest size
            assert y.shape[-2:] == sizes[0]
            reference = reference + y
        coarse = branch.scales[1](features[1], sizes[:1], last_upsample=False)
    assert out.shape == (2, 8, *sizes[0])
    assert coarse.shape[-2:] == sizes[1]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    # a branch that does not reach the finest level's size would differ by far more than the tolerance
    assert (out - reference).abs().max() < 1e-4 < (out - branch.scales[0](features[0], [])).abs().max()


def test_without_prune_the_pyramid_keeps_p2_as_before():
    """A detection-only model of the default settings keeps the P2 level older checkpoints hold."""
    _, model = _meta_model(["model.tasks=[detection]"])
    assert model.neck.strides == (4, 8, 16, 32, 64, 128)
    _, model = _meta_model(["model.tasks=[detection]", "model.neck.prune=true"])
    assert model.neck.strides == (8, 16, 32, 64, 128)


def test_scale_n_exports_to_onnx_and_matches_pytorch(tmp_path):
    from perception.inference.export import compare_with_torch, export_onnx, read_metadata

    torch.manual_seed(0)
    model = build_model(load_config(None, ["model.scale=n"]).model).eval()
    exported = export_onnx(model, tmp_path / "n.onnx", (64, 96), exporter="torchscript")
    images = (np.random.default_rng(0).random((1, 3, 64, 96)) * 255).astype(np.float32)
    diffs = compare_with_torch(exported.path, model, images)
    assert set(diffs) == set(exported.output_names) and max(diffs.values()) < 1e-3, diffs
    assert read_metadata(exported.path)["decode"]["detection"] == {"strides": [8, 16, 32]}  # P3..P5 decoded


def test_detection_box_and_centerness_from_one_stacked_convolution_equal_the_two_predictors():
    from perception.tasks.detection.head import FCOSHead

    torch.manual_seed(0)
    head = FCOSHead(8, 3, strides=(8, 16, 32), num_convs=1, tower="dwsep").eval()
    torch.nn.init.normal_(head.ctr_pred.weight, std=0.5)  # away from their zero-ish start: every value counts
    torch.nn.init.normal_(head.box_pred.weight, std=0.1)
    features = [torch.randn(2, 8, h, w) for h, w in ((9, 13), (5, 7), (3, 4))]
    with torch.no_grad():
        out = head(features)
        box, ctr = [], []
        for level, (x, stride) in enumerate(zip(features, head.strides)):
            feature = head.box_tower(x)
            box.append((torch.exp(head.scales[level](head.box_pred(feature))) * stride).flatten(2).transpose(1, 2))
            ctr.append(head.ctr_pred(feature).flatten(1))
    torch.testing.assert_close(out["centerness"], torch.cat(ctr, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["box_regression"], torch.cat(box, 1), rtol=1e-5, atol=1e-4)
    assert out["centerness"].shape == (2, 9 * 13 + 5 * 7 + 3 * 4)
    assert out["centerness"].std() > 0.1  # the stacked filters' fifth output is not a constant


def test_a_separable_pyramid_output_equals_the_dense_3x3_of_its_factorised_kernel():
    """neck.conv=dwsep: each level's output is the 1x1 of the 3x3 depthwise of the level's top-down sum, which
    is the dense 3x3 whose kernel is the pointwise weight times the depthwise taps: a dense pyramid given that
    kernel and the same laterals returns the same levels."""
    from perception.models.neck import FPN

    torch.manual_seed(0)
    channels, widths = 6, (4, 8, 12, 16)
    separable = FPN(widths, channels, extra_levels=True, conv="dwsep").eval()
    dense = FPN(widths, channels, extra_levels=True).eval()
    dense.fpn.inner_blocks.load_state_dict(separable.fpn.inner_blocks.state_dict())
    dense.fpn.extra_blocks.load_state_dict(separable.fpn.extra_blocks.state_dict())
    for block, target in zip(separable.fpn.layer_blocks, dense.fpn.layer_blocks):
        depthwise, pointwise = block
        torch.nn.init.normal_(pointwise.bias)
        kernel = pointwise.weight[:, :, 0, 0, None, None] * depthwise.weight[:, 0][None]  # [out, in, 3, 3]
        target[0].weight.data.copy_(kernel)
        target[0].bias.data.copy_(pointwise.bias)
    features = [torch.randn(2, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate(widths)]
    with torch.no_grad():
        ours, reference = separable(features), dense(features)
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in reference]
    assert len(ours) == 6 and ours[0].shape == (2, channels, 32, 48)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    per_level = {name: sum(p.numel() for p in m.fpn.layer_blocks.parameters()) for name, m in
                 (("dwsep", separable), ("conv", dense))}
    assert per_level == {"dwsep": 4 * (9 * channels + channels * channels + channels),
                         "conv": 4 * (9 * channels * channels + channels)}


def test_neck_conv_is_checked_and_reaches_the_built_pyramid():
    cfg, model = _meta_model(["model.neck.conv=dwsep", "model.neck.channels=16"])
    assert all(isinstance(block, torch.nn.Sequential) and block[0].groups == 16
               for block in model.neck.fpn.layer_blocks)
    with pytest.raises(ConfigError, match="neck.conv"):
        load_config(None, ["model.neck.conv=separable"])


def test_a_checkpoint_rebuilds_its_network_after_the_presets_gain_a_key(tmp_path):
    """A checkpoint stores its model section resolved; one saved before ``neck.conv`` existed has scale m without
    that key. Loading must rebuild the dense-3x3 pyramid it was trained with, not today's separable m."""
    from perception.config import config_to_dict
    from perception.inference.loading import load_model
    from perception.utils.checkpoint import save_checkpoint

    old = ["model.scale=m", "model.neck.conv=conv", "model.detection.max_stride=128", "model.detection.num_convs=2"]
    cfg = load_config(None, old)  # scale m as it was before the separable pyramid
    data = config_to_dict(cfg)
    del data["model"]["neck"]["conv"]
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = save_checkpoint({"config": data, "model": model.state_dict()}, tmp_path / "old_m.pt")
    loaded = load_model(path)
    assert loaded.model_config.scale == "m" and loaded.model_config.neck.conv == "conv"
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images)["depth"], model(images)["depth"])
    assert load_config(None, ["model.scale=m"]).model.neck.conv == "dwsep"  # a config naming m today
