"""The ROS 2 example's conversions, without ROS: image messages of every accepted encoding and row padding to
RGB, a Prediction to Detection2DArray fields, class ids to mono8 and depth to little-endian 32FC1 (REP 118),
and one camera frame through a real predictor into messages built from stand-in message classes."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from _inference_utils import scene_image, tiny_config, tiny_model
from perception.inference.prediction import Prediction
from perception.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("ros2_node", ROOT / "examples" / "ros2_node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ros2 = _load_example()


def _message(image: np.ndarray, encoding: str, padding: int = 0) -> SimpleNamespace:
    """A stand-in sensor_msgs/Image: ``image`` (H x W x C or H x W) with ``padding`` bytes after each row."""
    pixels = image.reshape(image.shape[0], -1)
    rows = np.concatenate([pixels, np.full((image.shape[0], padding), 77, np.uint8)], 1)
    return SimpleNamespace(height=image.shape[0], width=image.shape[1], encoding=encoding, is_bigendian=0,
                           step=rows.shape[1], data=rows.tobytes())


class _Point:
    def __init__(self):
        self.x, self.y = 0.0, 0.0


class _Pose2D:
    def __init__(self):
        self.position, self.theta = _Point(), 0.0


class _Box:
    def __init__(self):
        self.center, self.size_x, self.size_y = _Pose2D(), 0.0, 0.0


class _Detection2D:
    def __init__(self):
        self.header, self.bbox, self.results, self.id = None, _Box(), [], ""


class _Hypothesis:
    def __init__(self):
        self.hypothesis = SimpleNamespace(class_id="", score=0.0)


class _Array:
    def __init__(self):
        self.header, self.detections = None, []


class _Image:
    def __init__(self):
        self.header, self.height, self.width, self.encoding, self.is_bigendian, self.step, self.data = \
            None, 0, 0, "", 0, 0, b""


TYPES = SimpleNamespace(Detection2DArray=_Array, Detection2D=_Detection2D, ObjectHypothesisWithPose=_Hypothesis)


def test_the_example_imports_without_ros():
    before = {name for name in ("rclpy", "sensor_msgs", "vision_msgs") if name in sys.modules}
    module = _load_example()
    assert {name for name in ("rclpy", "sensor_msgs", "vision_msgs") if name in sys.modules} == before
    assert callable(module.main)


@pytest.mark.parametrize("padding", [0, 3])
def test_image_messages_of_every_encoding_become_rgb(padding):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = np.full((5, 7, 1), 9, np.uint8)
    cases = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
             "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2)}
    for encoding, pixels in cases.items():
        out = ros2.image_to_rgb(_message(np.ascontiguousarray(pixels), encoding, padding))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(ros2.image_to_rgb(_message(gray, "mono8", padding)),
                                  np.repeat(gray[:, :, None], 3, 2))


def test_bad_image_messages_are_named():
    rgb = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="'16UC1'.*rgb8"):
        ros2.image_to_rgb(_message(rgb, "16UC1"))
    short = _message(rgb, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(ValueError, match="71 bytes, expected height x step = 72"):
        ros2.image_to_rgb(short)
    narrow = _message(rgb, "rgb8")
    narrow.step = 10
    with pytest.raises(ValueError, match="step 10"):
        ros2.image_to_rgb(narrow)


def test_prediction_to_detection_fields_and_messages():
    result = {"boxes": np.array([[10, 20, 30, 60], [0, 0, 4, 2]], np.float32),
              "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([1, 0]), "class_names": ["car", "person"]}
    pred = Prediction(80, 100, {"objects": result, "semantic": {"semantic": np.zeros((80, 100), np.uint8)}},
                      {"objects": "detection", "semantic": "segmentation"})
    plain = ros2.detections_to_plain(pred)
    assert plain[0] == {"bbox": {"center": {"position": {"x": 20.0, "y": 40.0}, "theta": 0.0}, "size_x": 20.0,
                                 "size_y": 40.0},
                        "results": [{"hypothesis": {"class_id": "person", "score": pytest.approx(0.9)}}], "id": ""}
    assert plain[1]["bbox"]["center"]["position"] == {"x": 2.0, "y": 1.0}
    assert plain[1]["results"][0]["hypothesis"]["class_id"] == "car"
    assert [d["results"][0]["hypothesis"]["class_id"] for d in ros2.detections_to_plain(pred, class_ids="index")] \
        == ["1", "0"]
    header = SimpleNamespace(frame_id="camera", stamp=(12, 5))
    msg = ros2.build_detection_array(plain, header, TYPES)
    assert msg.header is header and len(msg.detections) == 2 and msg.detections[0].header is header
    first = msg.detections[0]
    assert (first.bbox.center.position.x, first.bbox.center.position.y, first.bbox.size_x, first.bbox.size_y) \
        == (20.0, 40.0, 20.0, 40.0)
    assert first.results[0].hypothesis.class_id == "person"
    # No detection task: nothing; no names: class_<i>.
    assert ros2.detections_to_plain(Prediction(8, 8, {}, {})) == []
    unnamed = Prediction(8, 8, {"d": {**result, "class_names": []}}, {"d": "detection"})
    assert ros2.detections_to_plain(unnamed)[0]["results"][0]["hypothesis"]["class_id"] == "class_1"
    with pytest.raises(ValueError, match="class_ids"):
        ros2.detections_to_plain(pred, class_ids="label")


def test_class_ids_to_mono8_round_trip():
    ids = np.random.default_rng(1).integers(0, 19, (6, 9)).astype(np.int32)
    fields = ros2.class_ids_to_mono8(ids)
    assert {k: fields[k] for k in ("height", "width", "encoding", "is_bigendian", "step")} == \
        {"height": 6, "width": 9, "encoding": "mono8", "is_bigendian": 0, "step": 9}
    np.testing.assert_array_equal(np.frombuffer(fields["data"], np.uint8).reshape(6, 9), ids)
    np.testing.assert_array_equal(ros2.image_to_rgb(SimpleNamespace(**fields))[:, :, 0], ids)
    with pytest.raises(ValueError, match="0..255"):
        ros2.class_ids_to_mono8(np.full((2, 2), 300))
    with pytest.raises(ValueError, match="2-D"):
        ros2.class_ids_to_mono8(np.zeros((2, 2, 1)))


def test_depth_to_32fc1_is_little_endian_metres():
    depth = np.array([[0.5, 1.25, 80.0], [3.0, 2.5e-3, 7.75]], np.float64)
    fields = ros2.depth_to_32fc1(depth)
    assert (fields["encoding"], fields["is_bigendian"], fields["step"], len(fields["data"])) == ("32FC1", 0, 12, 24)
    np.testing.assert_array_equal(np.frombuffer(fields["data"], "<f4").reshape(2, 3), depth.astype(np.float32))
    assert fields["data"][:4] == bytes([0, 0, 0, 0x3F])      # 0.5 as IEEE float32, least significant byte first
    msg = ros2.build_image(fields, SimpleNamespace(frame_id="camera"), _Image)
    assert msg.header.frame_id == "camera" and msg.encoding == "32FC1" and bytes(msg.data) == fields["data"]


def test_a_camera_frame_through_a_predictor_gives_every_message():
    model = tiny_model(tiny_config())
    predictor = Predictor(model, (64, 96), device="cpu")
    image = scene_image(3, 60, 80)
    msg = _message(np.ascontiguousarray(image[:, :, ::-1]), "bgr8", padding=4)   # a BGR camera with padded rows
    out = ros2.frame_outputs(predictor, msg)
    expected = predictor(image)
    assert len(out["detections"]) == len(expected.boxes) > 0
    assert out["detections"][0]["results"][0]["hypothesis"]["class_id"] in ("red", "blue")
    semantic, depth = out["semantic"], out["depth"]
    assert (semantic["height"], semantic["width"], depth["height"], depth["width"]) == (60, 80, 60, 80)
    np.testing.assert_array_equal(np.frombuffer(semantic["data"], np.uint8).reshape(60, 80), expected.semantic)
    np.testing.assert_array_equal(np.frombuffer(depth["data"], "<f4").reshape(60, 80), expected.depth)
    only_depth = ros2.frame_outputs(Predictor(model, (64, 96), tasks=["depth"], device="cpu"), msg)
    assert only_depth["detections"] is None and only_depth["semantic"] is None and only_depth["depth"] is not None
