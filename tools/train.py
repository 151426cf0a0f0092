#!/usr/bin/env python
"""Train a multi-task model.

    python tools/train.py --config configs/synthetic_driving.yaml train.max_steps=200 output_dir=runs/demo
    python tools/train.py --config configs/synthetic_driving.yaml --resume runs/demo/last.pt
    torchrun --nproc_per_node=4 tools/train.py --config configs/cityscapes.yaml      # several GPUs

Dotted key=value pairs after the options override the config. The run directory (output_dir) receives
config.yaml, last.pt, best.pt, metrics.json, train_log.jsonl and TensorBoard events under tb/.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import ConfigError, load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (with _base_ inheritance)")
    parser.add_argument("--resume", default=None, help="a last.pt to continue from (same config)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=0.001")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from perception.engine.trainer import NonFiniteLossError, train

    try:
        run_dir = train(cfg, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
