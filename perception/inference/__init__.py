"""Inference: the Python API (:class:`Predictor`), frame sources, visualisation, ONNX export.

    from perception.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo/best.pt")
    pred = predictor("street.png")          # Prediction: per task name, numpy results at the image's size
    pred["objects"]["boxes"], pred.depth    # one task's result; a field of the one task that has it
"""
from perception.inference.images import ImageReadError, as_rgb, read_image
from perception.inference.prediction import Prediction
from perception.inference.predictor import Predictor
from perception.inference.sources import Frame, SourceError, open_source
from perception.inference.visualize import render_prediction

__all__ = ["Frame", "ImageReadError", "Prediction", "Predictor", "SourceError", "as_rgb", "open_source",
           "read_image", "render_prediction"]
