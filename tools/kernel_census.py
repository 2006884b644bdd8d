#!/usr/bin/env python3
"""Where a training step's GPU time goes, kernel by kernel.

Reads the raw CSV that `ncu --csv --page raw --metrics gpu__time_duration.sum` prints (one row per
kernel launch) and prints, per kernel name, the launches and the total time per step, largest
first, with the share of the summed kernel time.

  tools/kernel_census.py CENSUS.csv [--steps N] [--top K] [--json FILE]

N is the number of steps the CSV covers (the totals are divided by it). Template arguments and
parameter lists are cut from the names so that launches of one kernel add up. A second table adds
the kernels up by what they do (CATEGORIES: the first rule whose pattern a name contains).
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict


def short_name(name: str) -> str:
    """The kernel's name without its parameter list and template arguments: 'ns::kern'."""
    name = re.sub(r"\(.*$", "", name.strip())
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    # 'void ns::kernel' -> 'ns::kernel'
    return name.split(" ")[-1] if " " in name else name


# What a kernel does, by the first pattern its short name contains (case-sensitive).
CATEGORIES = [
    ("attention (cuDNN / flash)", ("sdpa", "flash", "cudnn::", "mla_decode")),
    ("grouped expert GEMMs", ("grouped_gemm",)),
    ("FP8 quantization", ("quant",)),
    ("dense GEMMs (cuBLAS)", ("nvjet", "gemm", "cutlass", "splitKreduce")),
    ("optimizer", ("adamw", "grad_norm")),
    ("RMSNorm and residual", ("rmsnorm", "residual")),
    ("MoE routing and row shuffles", ("router", "permut", "gather_sum", "combine", "balance",
                                      "expert", "count_chunks", "scatter_chunks")),
    ("SwiGLU", ("swiglu",)),
    ("MLA glue and RoPE", ("split_kv", "merge_kv", "rope", "copy_padded")),
    ("loss and embedding (with its token sort)", ("xent", "embedding", "DeviceRadixSort")),
    ("casts, adds and copies", ("cast_kernel", "add_into", "axpby", "copy_2d")),
]


def category_of(short: str) -> str:
    for label, patterns in CATEGORIES:
        if any(p in short for p in patterns):
            return label
    return "other"


def read_rows(path: str):
    """(kernel name, microseconds) per launch from ncu's raw CSV page."""
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # drop ncu's own '==PROF==' lines
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        sys.exit(f"kernel_census: {path}: no CSV rows (did ncu profile any kernel?)")
    try:
        name_col = header.index("Kernel Name")
        time_col = header.index("gpu__time_duration.sum")
    except ValueError:
        sys.exit(f"kernel_census: {path}: no 'Kernel Name' / 'gpu__time_duration.sum' columns")
    units = None
    for row in reader:
        if len(row) <= max(name_col, time_col):
            continue
        value = row[time_col].replace(",", "")
        if units is None and not re.match(r"^[0-9.]+$", value):
            units = value  # the units row that follows the header
            continue
        try:
            t = float(value)
        except ValueError:
            continue
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(units, 1e-3)
        yield row[name_col], t * scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.steps <= 0:
        sys.exit("kernel_census: --steps must be > 0")
    total_us, calls = defaultdict(float), defaultdict(int)
    for name, us in read_rows(args.csv):
        key = short_name(name)
        total_us[key] += us
        calls[key] += 1
    grand = sum(total_us.values())
    if grand == 0:
        sys.exit(f"kernel_census: {args.csv}: no kernel times")
    ranked = sorted(total_us, key=total_us.get, reverse=True)
    print(f"{'kernel':<64} {'launches':>9} {'ms/step':>9} {'share':>7}")
    for key in ranked[: args.top]:
        print(f"{key[:64]:<64} {calls[key] / args.steps:>9.0f} "
              f"{total_us[key] / args.steps / 1e3:>9.2f} {100 * total_us[key] / grand:>6.1f}%")
    print(f"{'all kernels':<64} {sum(calls.values()) / args.steps:>9.0f} "
          f"{grand / args.steps / 1e3:>9.2f} {100.0:>6.1f}%")
    by_category, category_calls = defaultdict(float), defaultdict(int)
    for key in ranked:
        by_category[category_of(key)] += total_us[key]
        category_calls[category_of(key)] += calls[key]
    print()
    print(f"{'category':<64} {'launches':>9} {'ms/step':>9} {'share':>7}")
    for label in sorted(by_category, key=by_category.get, reverse=True):
        print(f"{label:<64} {category_calls[label] / args.steps:>9.0f} "
              f"{by_category[label] / args.steps / 1e3:>9.2f} "
              f"{100 * by_category[label] / grand:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"kernel": k, "launches_per_step": calls[k] / args.steps,
                        "ms_per_step": total_us[k] / args.steps / 1e3} for k in ranked], f, indent=1)


if __name__ == "__main__":
    main()
