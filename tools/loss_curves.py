#!/usr/bin/env python3
"""Compare the loss curves of two frugal training runs (their metrics.jsonl files).

Each run's training loss (default key loss_main, the next-token cross-entropy) is smoothed with a
bias-corrected exponential moving average (--ema, default 0.95; TensorBoard's smoothing), over
the steps both runs have. Prints, for each run, the final smoothed loss and the last validation
loss (val_loss records, when present), then the relative gap (B - A) / A of the final smoothed
losses, the mean relative gap over the last --tail fraction of the steps, and of the validation
losses. Draws both raw (faint) and smoothed curves, and the validation points, into a PNG when
--png is given (needs matplotlib). --json writes the figures.

    python3 tools/loss_curves.py runs/bf16/metrics.jsonl runs/fp8/metrics.jsonl \\
        --labels bf16 fp8 --png fp8_vs_bf16.png

Records whose loss is null (a non-finite loss is written as null) or skipped steps are left out.
A later record of the same step (a resumed run that redid a step) replaces the earlier one.
"""

import argparse
import json
import math
import sys


def read_run(path, key):
    """-> (steps, losses, {step: val_loss}) sorted by step."""
    train, val = {}, {}
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    sys.exit(f"loss_curves: {path}:{number}: not JSON ({exc})")
                step = record.get("step")
                if not isinstance(step, int):
                    continue
                loss = record.get(key)
                if isinstance(loss, (int, float)) and math.isfinite(loss) and not record.get("skipped"):
                    train[step] = float(loss)
                if isinstance(record.get("val_loss"), (int, float)):
                    val[step] = float(record["val_loss"])
    except OSError as exc:
        sys.exit(f"loss_curves: cannot read {path}: {exc.strerror}")
    if not train:
        sys.exit(f"loss_curves: {path}: no records with a finite '{key}'")
    steps = sorted(train)
    return steps, [train[s] for s in steps], val


def smooth(values, ema):
    """Bias-corrected exponential moving average."""
    out, average, weight = [], 0.0, 0.0
    for v in values:
        average = ema * average + (1 - ema) * v
        weight = ema * weight + (1 - ema)
        out.append(average / weight)
    return out


def relative_gap(b, a):
    return (b - a) / a if a != 0 else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="metrics.jsonl of the reference run (A)")
    parser.add_argument("run_b", help="metrics.jsonl of the compared run (B)")
    parser.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"))
    parser.add_argument("--key", default="loss_main", help="training-loss key (loss_main, loss)")
    parser.add_argument("--ema", type=float, default=0.95, help="smoothing factor in [0, 1)")
    parser.add_argument("--tail", type=float, default=0.1,
                        help="fraction of the last common steps whose mean gap is reported")
    parser.add_argument("--png", help="draw the curves into this PNG")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if not 0 <= args.ema < 1:
        sys.exit("loss_curves: --ema must be in [0, 1)")
    if not 0 < args.tail <= 1:
        sys.exit("loss_curves: --tail must be in (0, 1]")
    labels = args.labels or [args.run_a, args.run_b]

    runs = [read_run(path, args.key) for path in (args.run_a, args.run_b)]
    common = sorted(set(runs[0][0]) & set(runs[1][0]))
    if not common:
        sys.exit("loss_curves: the two runs share no step")
    curves = []
    for steps, losses, _ in runs:
        by_step = dict(zip(steps, losses))
        raw = [by_step[s] for s in common]
        curves.append((raw, smooth(raw, args.ema)))

    final = [c[1][-1] for c in curves]
    tail_start = max(0, int(len(common) * (1 - args.tail)) - 1)
    tail_gaps = [relative_gap(b, a) for a, b in zip(curves[0][1][tail_start:], curves[1][1][tail_start:])]
    figures = {"key": args.key, "ema": args.ema, "steps": len(common), "last_step": common[-1],
               "runs": []}
    print(f"{len(common)} common steps (last {common[-1]}), {args.key} smoothed with EMA {args.ema}")
    for label, path, (steps, losses, val), value in zip(labels, (args.run_a, args.run_b), runs, final):
        last_val = val[max(val)] if val else None
        entry = {"label": label, "path": path, "final_smoothed_loss": value,
                 "last_val_loss": last_val, "last_val_step": max(val) if val else None}
        figures["runs"].append(entry)
        print(f"  {label:<12} final smoothed loss {value:.4f}"
              + (f", validation loss {last_val:.4f} (step {max(val)})" if val else ""))
    gap = relative_gap(final[1], final[0])
    figures["relative_gap_final"] = gap
    figures["relative_gap_tail_mean"] = sum(tail_gaps) / len(tail_gaps)
    print(f"relative gap ({labels[1]} - {labels[0]}) / {labels[0]}: final {100 * gap:+.3f}%, "
          f"mean over the last {100 * args.tail:.0f}% of steps {100 * figures['relative_gap_tail_mean']:+.3f}%")
    val_a, val_b = runs[0][2], runs[1][2]
    val_common = sorted(set(val_a) & set(val_b))
    if val_common:
        last = val_common[-1]
        figures["relative_gap_val"] = relative_gap(val_b[last], val_a[last])
        print(f"validation at step {last}: {val_a[last]:.4f} vs {val_b[last]:.4f}, relative gap "
              f"{100 * figures['relative_gap_val']:+.3f}%")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            sys.exit("loss_curves: --png needs matplotlib")
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for label, (raw, smoothed), color, (_, _, val) in zip(labels, curves, ("tab:blue", "tab:red"), runs):
            ax.plot(common, raw, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(common, smoothed, color=color, linewidth=1.6,
                    label=f"{label} (final {smoothed[-1]:.4f})")
            if val:
                ax.plot(sorted(val), [val[s] for s in sorted(val)], "o--", color=color, markersize=4,
                        linewidth=0.8, label=f"{label} validation")
        ax.set_xlabel("step")
        ax.set_ylabel(args.key)
        ax.set_title(f"{labels[1]} vs {labels[0]}: relative gap {100 * gap:+.3f}% (EMA {args.ema})")
        lows = [min(c[1]) for c in curves]
        highs = [c[1][min(len(c[1]) - 1, len(c[1]) // 20)] for c in curves]
        ax.set_ylim(min(lows) * 0.98, max(max(highs), min(lows) * 1.02))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
