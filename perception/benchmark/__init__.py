"""Benchmarks behind ``tools/benchmark.py``: each sub-command is a module here with ``add_arguments`` and ``run``.

Speed is reported as ratios against a baseline measured in the same process, never asserted in tests.
"""
SUBCOMMANDS = {
    "model": ("perception.benchmark.model", "multi-task forward vs the three single-task models"),
    "methods": ("perception.benchmark.methods", "sharing modes' size and latency, weighting methods' step time"),
    "predictor": ("perception.benchmark.predictor", "predictor end to end: multi-task vs three single-task, ms/image"),
    "postprocess": ("perception.benchmark.postprocess", "dense post-processing: ours vs the full-size reference"),
    "train": ("perception.benchmark.train", "training images/s of a config: fp32 vs AMP vs channels_last vs compile"),
    "scales": ("perception.benchmark.scales", "model table per variant: params, GFLOPs, CPU ms eager and onnxruntime"),
    "peers": ("perception.benchmark.peers", "our Predictor against Ultralytics YOLO26n on the same photo"),
    "data": ("perception.benchmark.data", "data loading samples/s per worker (Cityscapes-sized, train augmentation)"),
}
