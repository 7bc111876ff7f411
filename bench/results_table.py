"""Render a `dlkernels bench --json` file as the Markdown table RESULTS.md quotes.

    python bench/results_table.py bench/results/cpu_all_2threads.json
"""

import json
import sys


def _cell(fig: dict | None) -> tuple[str, str]:
    if not fig:
        return "–", "–"
    if "skipped" in fig:
        return "skipped", fig["skipped"]
    rate = []
    if "gflops" in fig:
        rate.append(f"{fig['gflops']:.0f} GFLOP/s ({fig['pct_peak']:.0f}%)")
    if "gbs" in fig:
        rate.append(f"{fig['gbs']:.1f} GB/s ({fig['pct_bandwidth']:.0f}% bw)")
    ups = ", ".join(f"{v:.2f}x {k[len('speedup_vs_'):]}" for k, v in fig.items() if k.startswith("speedup_vs_"))
    return f"{fig['ms']:.2f} ms, " + ", ".join(rate), ups


def main(path: str) -> None:
    r = json.load(open(path))
    m, p = r["machine"], r["peak"]
    print(f"`{r['command']}` at commit {r['commit']}: {m['cpu']}, {m['threads']} threads, ISA {m['isa']}, "
          f"torch {m['torch']}; peak measured in the run: {p['gflops']:.1f} GFLOP/s (NumPy float32 2048³), "
          f"{p['copy_gbs']:.1f} GB/s (copy).\n")
    print("| case | kernel | forward | forward speedup | fwd+bwd | fwd+bwd speedup |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        if "status" in row:
            print(f"| {row['case']} | {row['backend']}/{row['variant']} | {row['status']} | | | |")
            continue
        f, fu = _cell(row.get("forward"))
        b, bu = _cell(row.get("forward+backward"))
        print(f"| {row['case']} | {row['backend']}/{row['variant']} | {f} | {fu} | {b} | {bu} |")


if __name__ == "__main__":
    main(sys.argv[1])
