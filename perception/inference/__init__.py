"""Inference: the Python API (:class:`Predictor`), frame sources, visualisation, ONNX export.

    from perception.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo/best.pt")
    pred = predictor("street.png")          # Prediction: numpy boxes/scores/labels, semantic, depth
"""
from perception.inference.images import ImageReadError, as_rgb, read_image
from perception.inference.prediction import Prediction
from perception.inference.predictor import Predictor
from perception.inference.sources import Frame, SourceError, open_source
from perception.inference.visualize import render_prediction

__all__ = ["Frame", "ImageReadError", "Prediction", "Predictor", "SourceError", "as_rgb", "open_source",
           "read_image", "render_prediction"]
