"""Learning curves and a results table from run directories.

  python -m cpg_jax.report DIR [DIR ...] [--out curves.png] [--title TEXT]
      [--markdown table.md]

Each DIR is a workdir of `train.py` (config.json + metrics.jsonl). The plot
shows, per run, the mean policy value over seeds with a band of one standard
deviation, the optimum and its 95% line, and a cross where a seed diverged.
The table gives the final value (mean ± std over seeds), the fraction of the
optimum, the first evaluated step at which the mean curve reached 95% of the
optimum, and the diverged seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from cpg_jax import metrics_log


def load_run(workdir: str) -> dict[str, Any]:
  """config.json and metrics.jsonl of a workdir, with arrays per field."""
  config_path = os.path.join(workdir, metrics_log.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir}: no {metrics_log.CONFIG_FILE}; is it a train.py workdir?")
  with open(config_path) as f:
    config = json.load(f)
  records = metrics_log.read_metrics(workdir)
  if not records:
    raise ValueError(f"{workdir}: {metrics_log.METRICS_FILE} has no evaluation records yet")
  steps = np.array([r["step"] for r in records])
  values = np.array([[np.nan if v is None else v for v in r["policy_value"]]
                     for r in records], dtype=np.float64)  # [evals, seeds]
  return {"workdir": workdir, "config": config, "steps": steps, "values": values,
          "optimal": records[-1]["optimal_value"], "diverged": records[-1]["diverged"]}


def label_of(run: dict[str, Any]) -> str:
  c = run["config"]
  return (f"{c['estimator']} K={c['num_candidates']} L={c['num_outputs']} "
          f"M={c['num_models']} {c['lsr']}")


def steps_to_fraction(steps: np.ndarray, mean_curve: np.ndarray, target: float):
  """First evaluated step where the mean curve reaches `target`, else None."""
  reached = np.nonzero(mean_curve >= target)[0]
  return int(steps[reached[0]]) if reached.size else None


def summary_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  rows = []
  for run in runs:
    final = run["values"][-1]
    mean_curve = np.nanmean(run["values"], axis=1)
    diverged = [(seed, step) for seed, step in enumerate(run["diverged"]) if step is not None]
    rows.append({
        "run": label_of(run),
        "steps": int(run["steps"][-1]),
        "seeds": final.size,
        "final_mean": float(np.nanmean(final)),
        "final_std": float(np.nanstd(final)),
        "fraction_of_optimum": float(np.nanmean(final) / run["optimal"]),
        "steps_to_95": steps_to_fraction(run["steps"], mean_curve, 0.95 * run["optimal"]),
        "diverged": diverged,
    })
  return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| run | steps | seeds | final value (mean ± std) | fraction of optimum "
           "| steps to 95% | diverged (seed@step) |",
           "|---|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    to95 = "not reached" if r["steps_to_95"] is None else f"{r['steps_to_95']:,}"
    div = ", ".join(f"{s}@{t:,}" for s, t in r["diverged"]) or "none"
    lines.append(
        f"| {r['run']} | {r['steps']:,} | {r['seeds']} | {r['final_mean']:.4f} ± "
        f"{r['final_std']:.4f} | {r['fraction_of_optimum']:.3f} | {to95} | {div} |")
  return "\n".join(lines) + "\n"


def plot(runs: Sequence[dict[str, Any]], out: str, title: str | None = None) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, run in enumerate(runs):
    color = colors[i % len(colors)]
    mean = np.nanmean(run["values"], axis=1)
    std = np.nanstd(run["values"], axis=1)
    ax.plot(run["steps"], mean, color=color, label=label_of(run))
    ax.fill_between(run["steps"], mean - std, mean + std, color=color, alpha=0.2)
    diverged_steps = [step for step in run["diverged"] if step is not None]
    for j, step in enumerate(diverged_steps):
      at = min(np.searchsorted(run["steps"], step), len(mean) - 1)
      ax.plot(step, mean[at], marker="x", color=color, markersize=9, mew=2,
              linestyle="none", label="a seed diverged" if j == 0 else None)
  optimal = runs[0]["optimal"]
  ax.axhline(optimal, color="black", linestyle="-", linewidth=1, label="optimum")
  ax.axhline(0.95 * optimal, color="black", linestyle="--", linewidth=1, label="95% of optimum")
  ax.set_xlabel("gradient steps")
  ax.set_ylabel("policy value (mean reward, deterministic ESR top-K)")
  ax.set_title(title or "Policy value during training (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def write_report(workdirs: Sequence[str], out: str | None = None,
                 title: str | None = None, markdown: str | None = None,
                 stream=sys.stdout) -> str:
  """Plots `workdirs` to `out` (default `<first workdir>/curves.png`), prints
  the table, and optionally writes it as Markdown. Returns the PNG path."""
  runs = [load_run(w) for w in workdirs]
  out = out or os.path.join(workdirs[0], "curves.png")
  plot(runs, out, title)
  table = markdown_table(summary_rows(runs))
  print(table, file=stream, end="")
  if markdown:
    metrics_log.atomic_write_text(markdown, table)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default=None, help="PNG path (default DIR/curves.png)")
  parser.add_argument("--title", default=None)
  parser.add_argument("--markdown", default=None, help="also write the table here")
  args = parser.parse_args(argv)
  try:
    png = write_report(args.workdirs, args.out, args.title, args.markdown)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Learning curves: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
