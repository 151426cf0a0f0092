"""Configuration of training (``train:``) and evaluation (``eval:``).

Both are plain dataclasses shaped like the objects they feed: ``TrainConfig`` the optimiser, the schedule and the
loop of :class:`perception.engine.trainer.Trainer`; ``EvalConfig`` the metrics of
:func:`perception.engine.evaluator.evaluate_model`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

@dataclass
class TrainConfig:
    """Optimisation and the training loop.

    Attributes:
        optimizer: ``adamw`` or ``sgd`` (both the fused implementations where the device has them).
        lr: peak learning rate.
        weight_decay: decoupled weight decay (none on norms, biases, 1-d parameters and the weighting's).
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        betas: AdamW betas.
        backbone_lr_mult: learning-rate multiplier of the backbone (e.g. 0.1 for a pretrained one).
        max_steps: optimizer steps.
        warmup_steps: linear warm-up steps, from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: learning-rate factor at step 0.
        schedule: ``cosine``, ``poly`` or ``constant`` after warm-up.
        min_lr_ratio: final learning rate of ``cosine``/``poly`` as a fraction of ``lr``.
        poly_power: exponent of ``poly``.
        grad_clip: max global gradient norm (0 = off).
        accumulate: micro-batches per optimizer step (gradient accumulation).
        amp: ``none``, ``bf16`` or ``fp16`` autocast (fp16 with a dynamic GradScaler; CUDA only).
        channels_last: NHWC memory format for the model and the images.
        compile: ``torch.compile`` the model.
        cudnn_benchmark: let cuDNN pick the fastest kernels (CUDA only).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, each process uses its LOCAL_RANK GPU).
        sync_bn: SyncBatchNorm under DistributedDataParallel (CUDA).
        find_unused_parameters: DDP option, needed when a task scheduler skips heads.
        ema: keep an exponential moving average of the weights, used for evaluation and best.pt.
        ema_decay: EMA decay.
        ema_warmup: ramp the EMA decay up over the first steps (timm's warm-up).
        log_interval: steps between progress/TensorBoard updates (the only host syncs of the loop).
        eval_interval: steps between evaluations on the val split (0: only at the end).
        checkpoint_interval: steps between writes of last.pt (0: at every evaluation only).
        max_nonfinite_steps: the run stops after this many consecutive steps skipped for a non-finite loss
            or gradient (checked at each log interval).
        best_metric: metric that selects best.pt: ``auto`` (``delta_m`` when eval.baselines are given, else
            ``score``), ``delta_m``, ``score`` or any metric key such as ``segmentation/mIoU``.
        num_overlays: prediction overlays written to TensorBoard at each evaluation.
        tensorboard: write TensorBoard event files in the run directory.
        progress: show a progress bar.
        affinity_interval: measure the inter-task affinity (how a step on each task's loss moves every other
            task's loss, docs/task_affinity.md) every this many steps, written to ``affinity.json`` and
            ``affinity.png`` (0: off).
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0
    max_steps: int = 1000
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    poly_power: float = 0.9
    grad_clip: float = 10.0
    accumulate: int = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    device: str = "auto"
    sync_bn: bool = False
    find_unused_parameters: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: bool = True
    log_interval: int = 20
    eval_interval: int = 500
    checkpoint_interval: int = 0
    max_nonfinite_steps: int = 20
    best_metric: str = "auto"
    num_overlays: int = 4
    tensorboard: bool = True
    progress: bool = True
    affinity_interval: int = 0

    def validate(self) -> None:
        positive = {"lr": self.lr, "max_steps": self.max_steps, "accumulate": self.accumulate,
                    "log_interval": self.log_interval, "max_nonfinite_steps": self.max_nonfinite_steps}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}: got {value}, expected a positive value")
        non_negative = {"weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                        "grad_clip": self.grad_clip, "eval_interval": self.eval_interval,
                        "checkpoint_interval": self.checkpoint_interval, "num_overlays": self.num_overlays,
                        "min_lr_ratio": self.min_lr_ratio, "backbone_lr_mult": self.backbone_lr_mult,
                        "affinity_interval": self.affinity_interval}
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name}: got {value}, expected a value >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: got {self.ema_decay}, expected a value in [0, 1)")
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor: got {self.warmup_factor}, expected a value in (0, 1]")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: got {self.device!r}, expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


@dataclass
class EvalConfig:
    """Metrics on the val split.

    Metrics are computed at the label resolution the dataset gives after its eval transform (the image resized
    to fit ``data.image_size`` keeping its aspect ratio); detection boxes are compared in that same frame.

    Attributes:
        min_depth: ground truth below this (metres) is not evaluated; predictions are clamped to it.
        depth_cap: ground truth beyond this is not evaluated and predictions are clamped to it (0: no cap);
            e.g. 10 for NYUv2, 80 for driving scenes.
        eigen_crop: evaluate depth inside the Eigen crop only (rows 45:471, cols 41:601 of NYUv2's 480x640,
            scaled to the label size).
        depth_average: ``image``: the Eigen metrics are computed per image and averaged over images (as the depth
            literature's evaluation code does); ``pixel``: pooled over all valid pixels of the split. The MTL
            benchmarks' ``abs_err``/``rel_err`` are always pooled over pixels.
        detection_score_thresh: score threshold of the detector during evaluation (null: the head's own).
        max_batches: evaluate at most this many batches per process (0: the whole split), e.g. for quick
            periodic evaluations.
        baselines: metrics.json files of single-task runs; with them ``delta_m`` is computed.
        delta_m_metrics: the metrics entering delta_m and their sign (+1 higher is better, -1 lower is better);
            each is grouped under the task named by its prefix. Empty: every task's own set (detection mAP;
            segmentation mIoU and pixel accuracy; depth AbsRel and RMSE; ...).
        score_weights: weights of the ``score`` metric, a weighted mean of these metrics (those present).
            Empty: each task's headline metric (detection mAP, segmentation mIoU, depth delta1, ...) with weight 1.
    """

    min_depth: float = 1e-3
    depth_cap: float = 0.0
    eigen_crop: bool = False
    depth_average: Literal["image", "pixel"] = "image"
    detection_score_thresh: float | None = None
    max_batches: int = 0
    baselines: list[str] = field(default_factory=list)
    delta_m_metrics: dict[str, int] = field(default_factory=dict)
    score_weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.min_depth < 0 or self.depth_cap < 0:
            raise ValueError(f"min_depth/depth_cap: got {self.min_depth}/{self.depth_cap}, expected values >= 0")
        if self.depth_cap and self.depth_cap <= self.min_depth:
            raise ValueError(f"depth_cap: got {self.depth_cap}, expected more than min_depth={self.min_depth}")
        for key, sign in self.delta_m_metrics.items():
            if sign not in (1, -1):
                raise ValueError(f"delta_m_metrics.{key}: got {sign}, expected +1 (higher is better) or -1")
            if "/" not in key:
                raise ValueError(f"delta_m_metrics: key {key!r} should be task/metric, e.g. segmentation/mIoU")
        if self.max_batches < 0:
            raise ValueError(f"max_batches: got {self.max_batches}, expected a value >= 0")
