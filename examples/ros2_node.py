#!/usr/bin/env python
"""A ROS 2 node that runs a trained network on a camera topic: detections, class ids and depth for a robot.

    python examples/ros2_node.py --ros-args -p checkpoint:=runs/demo/model.onnx -r image:=/camera/image_raw

Subscribes to ``image`` (``sensor_msgs/Image``: rgb8, bgr8, mono8, rgba8 or bgra8, any row padding) and publishes,
with the camera image's header (stamp and frame_id), under the node's name (``/perception/...`` by default):

- ``~/detections``: ``vision_msgs/Detection2DArray`` (box centre and size in the image's pixels; each result's
  ``hypothesis.class_id`` the class name, or the class index as a string with ``-p class_ids:=index``, and its
  ``score``);
- ``~/semantic``: a ``mono8`` image of class ids at the camera image's size;
- ``~/depth``: a ``32FC1`` image of depth in metres (REP 118), little-endian.

Parameters: ``checkpoint`` (a ``.pt`` from tools/train.py or an ``.onnx`` from tools/export.py, which runs with
onnxruntime on the CPU), ``device`` (``auto``, ``cpu``, ``cuda``; ``.pt`` only), ``score_thresh`` (negative:
the model's), ``class_ids`` (``name`` or ``index``). A task that the network lacks publishes nothing on its
topic. Requires a ROS 2 installation with ``rclpy``, ``sensor_msgs`` and ``vision_msgs`` (e.g.
``apt install ros-jazzy-vision-msgs``) in the Python that runs this file; the conversions below are plain
functions of message fields, usable (and tested) without ROS.
"""
from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Channels of each accepted sensor_msgs/Image encoding (8 bits each) and the channel order to read RGB from.
ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "rgba8": (4, (0, 1, 2)), "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


# ------------------------------------------------------------------------------------- pure conversions
def image_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` (anything with ``height``, ``width``, ``encoding``, ``step``, ``data``) as
    ndarray[H, W, 3] uint8 RGB.

    Rows may be padded (``step`` > width x channels): the padding is dropped. mono8 is replicated to three
    channels.

    Raises:
        ValueError: an encoding other than those of :data:`ENCODINGS`, or fewer bytes than ``height x step``.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding {msg.encoding!r}: expected one of {', '.join(ENCODINGS)}")
    channels, order = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if step < width * channels:
        raise ValueError(f"image step {step}: expected at least width x channels = {width * channels}")
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if data.size < height * step:
        raise ValueError(f"image data: {data.size} bytes, expected height x step = {height * step}")
    rows = data[:height * step].reshape(height, step)[:, :width * channels]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def detections_to_plain(pred: Any, task: str | None = None, class_ids: str = "name") -> list[dict[str, Any]]:
    """One task's detections as the fields of ``vision_msgs/Detection2D`` messages, in plain data.

    Args:
        pred: a :class:`perception.inference.Prediction`.
        task: the detection task (default: the one task with ``boxes``; none gives ``[]``).
        class_ids: ``name`` (the class name; ``class_<i>`` where the task has none) or ``index`` (the label as
            a string).

    Returns:
        per detection ``{"bbox": {"center": {"position": {"x", "y"}, "theta"}, "size_x", "size_y"},
        "results": [{"hypothesis": {"class_id", "score"}}], "id": ""}``, best first, in the image's pixels.
    """
    if class_ids not in ("name", "index"):
        raise ValueError(f"class_ids: got {class_ids!r}, expected name or index")
    if task is None:
        holders = [name for name, result in pred.results.items() if "boxes" in result]
        if not holders:
            return []
        task = holders[0]
    result = pred[task]
    names = list(result.get("class_names") or [])
    out = []
    for (x0, y0, x1, y1), score, label in zip(np.asarray(result["boxes"], np.float64).tolist(),
                                              np.asarray(result["scores"], np.float64).tolist(),
                                              np.asarray(result["labels"]).tolist()):
        label = int(label)
        class_id = str(label) if class_ids == "index" else (names[label] if label < len(names) else
                                                            f"class_{label}")
        out.append({"bbox": {"center": {"position": {"x": (x0 + x1) / 2.0, "y": (y0 + y1) / 2.0}, "theta": 0.0},
                             "size_x": x1 - x0, "size_y": y1 - y0},
                    "results": [{"hypothesis": {"class_id": class_id, "score": score}}], "id": ""})
    return out


def class_ids_to_mono8(ids: np.ndarray) -> dict[str, Any]:
    """Class ids ndarray[H, W] as the fields of a ``mono8`` ``sensor_msgs/Image``.

    Raises:
        ValueError: not a 2-D map, or an id outside 0..255 (mono8 holds one byte per pixel).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"class ids: expected a 2-D map, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"class ids: range {ids.min()}..{ids.max()}, expected 0..255 for mono8")
    height, width = ids.shape
    return {"height": height, "width": width, "encoding": "mono8", "is_bigendian": 0, "step": width,
            "data": np.ascontiguousarray(ids, np.uint8).tobytes()}


def depth_to_32fc1(depth: np.ndarray) -> dict[str, Any]:
    """Depth in metres ndarray[H, W] as the fields of a ``32FC1`` ``sensor_msgs/Image`` (REP 118): float32,
    little-endian whatever the host's byte order, ``is_bigendian`` 0.

    Raises:
        ValueError: not a 2-D map.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected a 2-D map, got shape {depth.shape}")
    height, width = depth.shape
    return {"height": height, "width": width, "encoding": "32FC1", "is_bigendian": 0, "step": width * 4,
            "data": np.ascontiguousarray(depth, "<f4").tobytes()}


def first_with(pred: Any, field: str) -> str | None:
    """The name of the first task (network order) whose result has ``field``; None when none has."""
    return next((name for name, result in pred.results.items() if field in result), None)


def frame_outputs(predictor: Any, msg: Any, class_ids: str = "name") -> dict[str, Any]:
    """Everything the node publishes for one camera image, in plain data.

    Returns:
        ``{"detections": [...] or None, "semantic": image fields or None, "depth": image fields or None}``
        (None: the network has no such task).
    """
    pred = predictor(image_to_rgb(msg))
    semantic, depth = first_with(pred, "semantic"), first_with(pred, "depth")
    return {"detections": detections_to_plain(pred, class_ids=class_ids) if first_with(pred, "boxes") else None,
            "semantic": class_ids_to_mono8(pred[semantic]["semantic"]) if semantic else None,
            "depth": depth_to_32fc1(pred[depth]["depth"]) if depth else None}


def build_detection_array(detections: list[Mapping[str, Any]], header: Any, types: Any) -> Any:
    """A ``vision_msgs/Detection2DArray`` from :func:`detections_to_plain`'s data.

    Args:
        detections: the plain detections.
        header: the ``std_msgs/Header`` to stamp the array and each detection with.
        types: a namespace with the message classes ``Detection2DArray``, ``Detection2D``,
            ``ObjectHypothesisWithPose`` (vision_msgs.msg) that are built and filled attribute by attribute.
    """
    array = types.Detection2DArray()
    array.header = header
    items = []
    for plain in detections:
        det = types.Detection2D()
        det.header = header
        det.id = plain["id"]
        box = plain["bbox"]
        det.bbox.center.position.x = box["center"]["position"]["x"]
        det.bbox.center.position.y = box["center"]["position"]["y"]
        det.bbox.center.theta = box["center"]["theta"]
        det.bbox.size_x, det.bbox.size_y = box["size_x"], box["size_y"]
        results = []
        for hyp in plain["results"]:
            entry = types.ObjectHypothesisWithPose()
            entry.hypothesis.class_id = hyp["hypothesis"]["class_id"]
            entry.hypothesis.score = hyp["hypothesis"]["score"]
            results.append(entry)
        det.results = results
        items.append(det)
    array.detections = items
    return array


def build_image(fields: Mapping[str, Any], header: Any, image_type: Any) -> Any:
    """A ``sensor_msgs/Image`` (``image_type``) from :func:`class_ids_to_mono8` / :func:`depth_to_32fc1` fields."""
    msg = image_type()
    msg.header = header
    for key, value in fields.items():
        # array('B'): the form a ROS 2 uint8[] field takes without checking every byte in Python.
        setattr(msg, key, array("B", value) if key == "data" else value)
    return msg


def load_predictor(checkpoint: str, device: str = "auto", score_thresh: float | None = None) -> Any:
    """A Predictor from a ``.pt`` checkpoint (PyTorch) or an ``.onnx`` file (onnxruntime)."""
    from perception.inference import Predictor

    if checkpoint.lower().endswith(".onnx"):
        return Predictor.from_onnx(checkpoint, score_thresh=score_thresh)
    return Predictor.from_checkpoint(checkpoint, device=device, score_thresh=score_thresh)


# ------------------------------------------------------------------------------------------------ the node
def main(argv: list[str] | None = None) -> int:
    """Spin the node until Ctrl-C (ROS arguments: ``--ros-args -p checkpoint:=... -r image:=...``)."""
    # ROS is imported here, not at the top: the conversions above import (and are tested) without it.
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    types = SimpleNamespace(Detection2DArray=Detection2DArray, Detection2D=Detection2D,
                            ObjectHypothesisWithPose=ObjectHypothesisWithPose)

    class PerceptionNode(Node):
        def __init__(self) -> None:
            super().__init__("perception")
            checkpoint = self.declare_parameter("checkpoint", "").value
            device = self.declare_parameter("device", "auto").value
            thresh = float(self.declare_parameter("score_thresh", -1.0).value)
            self.class_ids = self.declare_parameter("class_ids", "name").value
            if not checkpoint:
                raise ValueError("parameter checkpoint: expected a .pt or .onnx file (-p checkpoint:=PATH)")
            self.predictor = load_predictor(checkpoint, device, thresh if thresh >= 0 else None)
            self.detections = self.create_publisher(Detection2DArray, "~/detections", 10)
            self.semantic = self.create_publisher(Image, "~/semantic", 10)
            self.depth = self.create_publisher(Image, "~/depth", 10)
            # Sensor-data QoS (best effort, keep the last few): a slow network skips frames rather than lagging.
            self.create_subscription(Image, "image", self.on_image, qos_profile_sensor_data)
            self.get_logger().info(f"{checkpoint}: tasks {', '.join(self.predictor.task_names)}")

        def on_image(self, msg: Image) -> None:
            try:
                out = frame_outputs(self.predictor, msg, self.class_ids)
            except ValueError as err:  # an encoding we do not read: say so, keep running
                self.get_logger().error(str(err), throttle_duration_sec=5.0)
                return
            if out["detections"] is not None:
                self.detections.publish(build_detection_array(out["detections"], msg.header, types))
            if out["semantic"] is not None:
                self.semantic.publish(build_image(out["semantic"], msg.header, Image))
            if out["depth"] is not None:
                self.depth.publish(build_image(out["depth"], msg.header, Image))

    rclpy.init(args=argv)
    node = None
    try:
        node = PerceptionNode()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
