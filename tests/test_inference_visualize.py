"""Pictures: one panel per task drawn by its type, the layouts, and TensorBoard overlays identical to tools/infer.py's."""
import numpy as np
import pytest
import torch

from _inference_utils import FOUR_TASKS, scene_image, tiny_config, tiny_model
from perception.engine.monitor import Monitor
from perception.inference.prediction import Prediction
from perception.inference.predictor import Predictor
from perception.inference.visualize import render_prediction
from perception.ops.draw import caption_panel, colorize_depth, compose


@pytest.fixture(scope="module")
def four():
    return tiny_model(tiny_config(FOUR_TASKS))


def test_a_panel_per_task_in_every_layout(four):
    image = scene_image(0, 50, 70)
    pred = Predictor(four, (64, 96), device="cpu")(image)
    assert pred.tasks == ["objects", "semantic", "coarse", "depth"]
    side = render_prediction(image, pred, "side", four.task_specs)
    assert side.shape == (50, 4 * 70, 3) and side.dtype == np.uint8
    assert render_prediction(image, pred, "tile").shape == (100, 140, 3)     # 2 x 2, no room needed for the input
    assert render_prediction(image, pred, "stack").shape == (200, 70, 3)
    # Each panel is its task's own picture; two tasks of one type get their names written in, so they can be told
    # apart.
    for k, (name, task) in enumerate(four.task_specs.items()):
        expected = caption_panel(task.draw(image, pred[name]), name)
        np.testing.assert_array_equal(side[:, 70 * k:70 * (k + 1)], expected)
    assert not np.array_equal(side[:, 140:210], four.task_specs["coarse"].draw(image, pred["coarse"]))
    # Three tasks tile as before: the input image in the first of the 2 x 2 tiles.
    three = Prediction(50, 70, {n: pred[n] for n in ("objects", "semantic", "depth")},
                       {n: pred.types[n] for n in ("objects", "semantic", "depth")})
    tile = render_prediction(image, three, "tile")
    assert tile.shape == (100, 140, 3)
    np.testing.assert_array_equal(tile[:50, :70], image)
    np.testing.assert_array_equal(tile[50:, 70:], colorize_depth(pred.depth))  # one task per type: no caption
    # No task: the plain image. A picture of the wrong size is refused.
    np.testing.assert_array_equal(render_prediction(image, Prediction(50, 70), "tile"), image)
    with pytest.raises(ValueError, match="prediction's size"):
        render_prediction(image[:40], pred)
    with pytest.raises(ValueError, match="layout"):
        compose([image], "grid")


class _Writer:
    """Stands in for TensorBoard's SummaryWriter: keeps the pictures."""

    def __init__(self):
        self.images = {}

    def add_scalar(self, *args, **kwargs):
        pass

    def add_image(self, tag, picture, step, dataformats="CHW"):
        assert dataformats == "HWC"
        self.images[tag] = np.asarray(picture)

    def flush(self):
        pass

    def close(self):
        pass


def test_tensorboard_overlays_are_the_infer_pictures(four, tmp_path):
    """The same network-size prediction drawn for TensorBoard and by tools/infer.py's renderer: the same pixels,
    with Cityscapes colours for Cityscapes names and turbo depth colours (near warm, far blue)."""
    image = torch.from_numpy(np.ascontiguousarray(scene_image(1, 64, 96).transpose(2, 0, 1)))
    with torch.no_grad():
        outputs = four(image[None])
        preds = four.postprocess(outputs, (64, 96))
    tasks = four.task_specs
    per_image = {name: tasks[name].select(p, 0) for name, p in preds.items()}
    monitor = Monitor(tmp_path, total_steps=1, progress=False, tensorboard=False)
    monitor.writer = _Writer()
    monitor.evaluation(10, {"depth/abs_rel": 0.5}, [(image, per_image)], tasks)
    tensorboard = monitor.writer.images["val/overlay_0"]
    monitor.close()

    rgb = image.permute(1, 2, 0).numpy()
    pred = Prediction(64, 96, {name: tasks[name].to_numpy(p) for name, p in per_image.items()},
                      {name: task.TYPE for name, task in tasks.items()})
    infer = render_prediction(rgb, pred, "side", tasks)
    np.testing.assert_array_equal(tensorboard, infer)

    coarse = tensorboard[:, 2 * 96:3 * 96].astype(np.float64)
    ids = pred["coarse"]["semantic"]
    road = np.array([128, 64, 128], np.float64)                 # cityscapesscripts' colour of "road"
    blended = 0.55 * road + 0.45 * rgb.astype(np.float64)
    inside = (ids == 0)
    inside[-16:, :] = False                                     # the caption's corner
    assert inside.sum() > 50
    np.testing.assert_allclose(coarse[inside], blended[inside], atol=1.0)
    depth = pred.depth
    panel = tensorboard[:, 3 * 96:].astype(np.int64)
    near, far = depth < np.percentile(depth, 2), depth > np.percentile(depth, 98)
    near[:, -48:] = far[:, -48:] = near[-16:] = far[-16:] = False   # the scale bar, the caption
    assert near.sum() > 20 and far.sum() > 20
    assert (panel[near][:, 0] > panel[near][:, 2]).all()          # warm
    assert (panel[far][:, 2] > panel[far][:, 0]).all()            # blue
