"""Our experiment (a) beside the values read off the paper's K-sweep figure.

  python -m cpg_jax.experiments.paper_figure ROOT [--markdown FILE]

ROOT is the root of an experiment-(a) sweep (one workdir per estimator and K,
`python -m cpg_jax.experiments.sweep --experiment=a --root=ROOT`). Printed:

1. At each step where values were read off the paper's figure, per K and
   estimator: our mean policy value over seeds (and its standard deviation)
   at that evaluated step, the paper's value, and ours minus the paper's.
   A run that has not reached the step says so.
2. Per K, the two reference lines: 95% of the optimum (the reference code's
   generator has the optimum 9.10-9.12 at every K, ours 9.16), and the
   paper's dashed lines, most likely the best final value at 500,000 steps
   and 95% of it (not the optimum); for each estimator the first evaluated
   step at which our mean curve reached 95% of the paper's best final value.

The paper's values are readings of a figure by eye (about +-0.02). NumPy and
the standard library only (no JAX).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from cpg_jax import user_errors
from cpg_jax.experiments import runs as runs_lib
from cpg_jax.training import metrics_log
from cpg_jax.user_errors import UserError

# Read off the paper's K-sweep figure: (K, step) -> estimator -> mean value.
PAPER_READINGS = {
    (20, 60_000): {"ca_pg": 8.42, "ca_pg_swr": 8.38, "vpg_swr": 7.97},
    (20, 200_000): {"ca_pg": 8.65, "ca_pg_swr": 8.58, "vpg_swr": 8.42},
    (10, 100_000): {"ca_pg": 8.20, "ca_pg_swr": 8.15, "vpg_swr": 8.05},
    (10, 200_000): {"ca_pg": 8.35, "ca_pg_swr": 8.30, "vpg_swr": 8.27},
}
# The paper's dashed lines per K: the best final value (at 500,000 steps).
PAPER_BEST_FINAL = {5: 8.35, 10: 8.55, 20: 8.76}
# The paper's V-PG stops by overflow in every seed before about this step.
PAPER_VPG_STOPS_BY = 55_000


def _find_runs(root: str) -> dict[tuple[str, int], dict]:
  """(estimator, K) -> run, for the workdirs under `root` with results."""
  found = {}
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    if not (os.path.isdir(workdir) and runs_lib.has_results(workdir)):
      continue
    run = runs_lib.load_run(workdir)
    key = (str(run["config"].get("estimator")),
           int(runs_lib.config_value(run["config"], "num_candidates")))
    found[key] = run
  if not found:
    raise runs_lib.ReportError(f"{root}: no train.py workdirs with results under it")
  return found


def _value_at(run: dict, step: int) -> tuple[float, float] | None:
  """(mean, std over seeds) of the policy value at evaluated `step`, or None."""
  where = np.flatnonzero(np.asarray(run["steps"]) == step)
  if where.size == 0:
    return None
  values = np.asarray(run["values"][where[0]], np.float64)
  return float(np.nanmean(values)), float(np.nanstd(values))


def matched_steps_table(found: dict[tuple[str, int], dict]) -> str:
  """Part 1 as Markdown: ours and the paper's at the paper's steps."""
  lines = ["| K | step | estimator | ours: mean (std over seeds) | seeds | paper (read off "
           "the figure) | ours - paper |", "|---:|---:|---|---:|---:|---:|---:|"]
  for (k, step), readings in sorted(PAPER_READINGS.items()):
    for estimator, paper in readings.items():
      run = found.get((estimator, k))
      at = None if run is None else _value_at(run, step)
      name = runs_lib.estimator_name(estimator)
      if at is None:
        reached = "no run" if run is None else f"not reached (at {int(run['steps'][-1]):,})"
        lines.append(f"| {k} | {step:,} | {name} | {reached} | - | {paper:.2f} | - |")
        continue
      seeds = np.asarray(run["values"][0]).size
      lines.append(f"| {k} | {step:,} | {name} | {at[0]:.3f} ({at[1]:.3f}) | {seeds} | "
                   f"{paper:.2f} | {at[0] - paper:+.3f} |")
  return "\n".join(lines) + "\n"


def reference_lines_table(found: dict[tuple[str, int], dict]) -> str:
  """Part 2 as Markdown: per K and estimator, the steps to 95% of the optimum
  and to 95% of the paper's best final value."""
  lines = ["| K | estimator | last step | our optimum | steps to 95% of the optimum | "
           "paper's best final | steps to 95% of it |", "|---:|---|---:|---:|---:|---:|---:|"]
  for (estimator, k), run in sorted(found.items(), key=lambda kv: (kv[0][1], runs_lib.
                                                                   estimator_rank(kv[1]))):
    mean_curve = runs_lib.mean_curve(run["values"])
    last = int(run["steps"][-1])

    def steps_text(target):
      steps = runs_lib.steps_to_fraction(run["steps"], mean_curve, target)
      return f"not by {last:,}" if steps is None else f"{steps:,}"

    best = PAPER_BEST_FINAL.get(k)
    lines.append(
        f"| {k} | {runs_lib.estimator_name(estimator)} | {last:,} | {run['optimal']:.4f} | "
        f"{steps_text(0.95 * run['optimal'])} | {'-' if best is None else f'{best:.2f}'} | "
        f"{'-' if best is None else steps_text(0.95 * best)} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cpg_jax.experiments.paper_figure",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("root", help="the root of an experiment-(a) sweep")
  parser.add_argument("--markdown", default=None, help="also write both tables here")
  args = parser.parse_args(argv)
  try:
    found = _find_runs(args.root)
  except (UserError, OSError) as e:
    message = e if isinstance(e, UserError) else runs_lib.ReportError(str(e))
    print(user_errors.format_error(message), file=sys.stderr)
    return user_errors.EXIT_USER_ERROR
  text = (f"# Experiment (a) beside the paper's figure\n\nRoot: `{args.root}`\n\n"
          "## At the paper's steps\n\n" + matched_steps_table(found)
          + "\n## Reference lines\n\n" + reference_lines_table(found))
  print(text, end="")
  if args.markdown:
    metrics_log.atomic_write_text(args.markdown, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
