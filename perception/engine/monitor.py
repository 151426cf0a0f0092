"""What a run shows and records: a progress bar, TensorBoard scalars and overlays, and a JSON-lines log.

Only the main process creates any of them; on the others every method is a no-op.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from perception.ops.draw import render_overlay


class Monitor:
    """Progress bar (tqdm), TensorBoard writer and ``train_log.jsonl`` of one run.

    Args:
        run_dir: the run directory.
        total_steps: optimizer steps of the run.
        start_step: where a resumed run starts.
        enabled: whether this process records anything (the main process).
        progress: show the progress bar.
        tensorboard: write TensorBoard events under ``run_dir/tb``.
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.bar = None
        self.writer = None
        self.log_file = None
        if not enabled:
            return
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step or None)
        self.log_file = open(run_dir / "train_log.jsonl", "a", encoding="utf-8")

    def train_window(self, step: int, steps_done: int, values: Mapping[str, float]) -> None:
        """Record one log window.

        Args:
            step: the optimizer step reached.
            steps_done: steps since the previous window (advances the bar).
            values: ``loss/<task>``, ``weight/<task>``, ``sigma/<task>``, ``lr``, ``images_per_s``, ...
        """
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(steps_done)
            self.bar.set_postfix_str(_postfix(values), refresh=False)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, step)
        self._log({"step": step, **values})

    def evaluation(self, step: int, metrics: Mapping[str, float], overlays: Sequence[tuple[Tensor, dict]] = (),
                   tasks: Mapping[str, Any] | None = None) -> None:
        """Record an evaluation: scalars, overlays and a log line.

        Args:
            step: the optimizer step.
            metrics: flat ``<task>/<metric>`` values.
            overlays: (image Tensor[3, H, W] uint8 RGB, {task name: its prediction at the network input size}),
                drawn as tools/infer.py draws (one visualiser: same colours for the same prediction).
            tasks: task name -> :class:`perception.tasks.Task` (needed with overlays).
        """
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"val/{key}", value, step)
            for i, (image, prediction) in enumerate(overlays):
                self.writer.add_image(f"val/overlay_{i}", render_overlay(image, prediction, tasks or {}), step,
                                      dataformats="HWC")
            self.writer.flush()
        self._log({"step": step, "eval": dict(metrics)})

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard scalars under their own tags (e.g. ``affinity/a->b``); the finite ones only."""
        if self.writer is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def message(self, text: str) -> None:
        """A line of text that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _log(self, record: dict) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.log_file is not None:
            self.log_file.close()
        self.bar = self.writer = self.log_file = None


def cut_log(path: Path, step: int) -> int:
    """Keep the records of ``train_log.jsonl`` up to ``step`` (where a resumed run continues; 0 for a fresh
    start) so that every step is logged once; a line cut short by a kill goes too. Rewritten atomically.

    Returns:
        the number of lines dropped.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def _postfix(values: Mapping[str, float]) -> str:
    parts = [f"{values['images_per_s']:.1f} img/s"] if "images_per_s" in values else []
    for key, value in values.items():
        if key.startswith("loss/") and key.count("/") == 1:
            parts.append(f"{key[5:]} {value:.3f}")
    for key, value in values.items():
        if key.startswith("weight/"):
            parts.append(f"w_{key[7:]} {value:.2f}")
        elif key.startswith("sigma/"):
            parts.append(f"sigma_{key[6:]} {value:.2f}")
    return ", ".join(parts)
