#!/usr/bin/env python
"""Evaluate a checkpoint on the val split: print a table, write metrics.json.

    python tools/eval.py --config configs/synthetic_driving.yaml --checkpoint runs/demo/best.pt
    python tools/eval.py --config configs/nyuv2.yaml --checkpoint runs/nyu_mtl/best.pt \
        --baselines runs/nyu_seg/metrics.json runs/nyu_depth/metrics.json     # adds delta_m

Dotted key=value pairs after the options override the config (e.g. eval.depth_cap=10). The network is rebuilt
from the checkpoint's own config; data and metric options come from --config. Its classes must be the data's
(count and names), else it stops before the first image. The forward runs in fp32 unless --amp bf16|fp16 is
given (the training config's train.amp and channels_last are not used). A bad input ends with one line
`error: ...` and exit code 2; --debug also prints the traceback.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import load_config  # noqa: E402
from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def _main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", required=True, help="YAML config (data and eval sections are used)")
    parser.add_argument("--checkpoint", required=True, help="last.pt or best.pt")
    parser.add_argument("--baselines", nargs="*", default=[], help="single-task metrics.json files (delta_m)")
    parser.add_argument("--output", default=None, help="metrics.json path (default: next to the checkpoint)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast the forward (fp16: CUDA only); default fp32")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and images")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from perception.engine.evaluator import evaluate, format_metrics

    output = args.output or str(Path(args.checkpoint).with_name("metrics.json"))
    metrics = evaluate(cfg, args.checkpoint, args.baselines, output, prefer_ema=not args.no_ema, amp=args.amp,
                       channels_last=args.channels_last)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    print(f"metrics written to {output}")
    return 0


def main(argv=None) -> int:
    """Evaluate; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
