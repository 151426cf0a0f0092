#!/usr/bin/env python
"""Train a multi-task model.

    python tools/train.py --config configs/synthetic_driving.yaml train.max_steps=200 output_dir=runs/demo
    python tools/train.py --config configs/synthetic_driving.yaml --resume runs/demo/last.pt
    torchrun --nproc_per_node=4 tools/train.py --config configs/cityscapes.yaml      # several GPUs

Dotted key=value pairs after the options override the config. The run directory (output_dir) receives
config.yaml, last.pt, best.pt, metrics.json, train_log.jsonl, TensorBoard events under tb/ and, when
data.skip_bad skipped samples, bad_samples.txt. A bad input (config, data, checkpoint) ends with one line
`error: ...` and exit code 2; --debug (or PERCEPTION_DEBUG=1) also prints the traceback.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import load_config  # noqa: E402
from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def _main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", required=True, help="YAML config (with _base_ inheritance)")
    parser.add_argument("--resume", default=None, help="a last.pt to continue from (same config)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=0.001")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from perception.engine.trainer import NonFiniteLossError, train

    try:
        run_dir = train(cfg, resume=args.resume)
    except NonFiniteLossError as err:  # the data or the settings diverge: not a bad input, exit 1
        print(f"error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}")
    return 0


def main(argv=None) -> int:
    """Train; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
