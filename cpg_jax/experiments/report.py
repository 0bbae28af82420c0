"""Learning curves and a results table from run directories.

  python -m cpg_jax.experiments.report DIR [DIR ...] [--out curves.png]
      [--title TEXT] [--markdown table.md] [--facet FIELD[,FIELD]]
      [--up_to_step STEP] [--gaps]

Each DIR is a workdir of `train.py` (config.json + metrics.jsonl).

The figure (`experiments.plots`) shows, per run, the mean policy value over
seeds with a band of one standard deviation, the optimum and its 95% line,
and an "x" where a seed diverged. `--facet num_candidates` (or K; L, M and
LSR are accepted too) draws one panel per distinct value of those config
fields, each with its own optimum lines; within a panel there is one curve
per remaining difference between the runs (normally the estimator).

The table (printed; `--markdown` also writes it with a title and the
definitions) gives, per run: the estimator, K, L, M, the LSR, the learning
rate and any other config field that differs between the runs; the final
policy value as mean, standard deviation (ddof = 0) and min-max over seeds;
the optimum and the fraction of it reached; two headline measures of speed,
the first evaluated step at which the mean curve over seeds reached 95% of
the optimum and the first at which it reached 95% of the best final value
in its panel (the reference line of the paper's figures); and the diverged
seeds. `--up_to_step STEP` reads every run only up to STEP (its "final" value
is then the last evaluation at or before STEP), so that a longer run can be
set beside shorter ones at the same step. `--gaps` adds a second table: for
every pair of runs in a panel, how far apart their mean curves are over the
steps both evaluated (the largest gap and where, the gap at the last common
step, and the larger standard deviation over seeds there, the scale to read
it against). Bad inputs (a directory without
config.json, no evaluation records, an unknown facet field) raise
`ReportError`; the command prints it as one paragraph and exits with 2
(`cpg_jax.user_errors`). Nothing here imports JAX.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from cpg_jax import user_errors
from cpg_jax.experiments import plots
from cpg_jax.experiments import runs as runs_lib
from cpg_jax.experiments.runs import ReportError, load_run, parse_facet
from cpg_jax.training import metrics_log
from cpg_jax.user_errors import UserError

__all__ = ["ReportError", "curve_gaps", "gaps_table", "load_run", "main",
           "markdown_document", "markdown_table", "parse_facet", "summary_rows",
           "write_report"]


def _row(run: dict[str, Any], label: str, facet: Sequence[str], extra: Sequence[str],
         best_final: float) -> dict[str, Any]:
  final = run["values"][-1]
  mean_curve = runs_lib.mean_curve(run["values"])
  first_seed = int(run["config"].get("seed", 0))
  columns = {"estimator": runs_lib.estimator_name(str(run["config"].get("estimator", "?")))}
  for field in (*runs_lib.TABLE_FIELDS, *extra):
    columns[runs_lib.SHORT_NAMES.get(field, field)] = runs_lib.format_value(
        runs_lib.config_value(run["config"], field, "-"))
  final_mean = float(runs_lib.nan_stat(np.nanmean, final))
  return {
      "run": label,
      "workdir": run["workdir"],
      "columns": columns,
      "facet": {f: runs_lib.config_value(run["config"], f, None) for f in facet},
      "steps": int(run["steps"][-1]),
      "seeds": int(final.size),
      "final_mean": final_mean,
      "final_std": float(runs_lib.nan_stat(np.nanstd, final)),
      "final_min": float(runs_lib.nan_stat(np.nanmin, final)),
      "final_max": float(runs_lib.nan_stat(np.nanmax, final)),
      "optimal": float(run["optimal"]),
      "best_with_lsr": float(run["best_with_lsr"]),
      "fraction_of_optimum": final_mean / run["optimal"] if run["optimal"] else float("nan"),
      "steps_to_95": runs_lib.steps_to_fraction(run["steps"], mean_curve,
                                                0.95 * run["optimal"]),
      "best_final": best_final,
      "steps_to_95_best": runs_lib.steps_to_fraction(run["steps"], mean_curve,
                                                     0.95 * best_final),
      "diverged": [(first_seed + s, step) for s, step in enumerate(run["diverged"])
                   if step is not None],
  }


def summary_rows(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()
                 ) -> list[dict[str, Any]]:
  """One row per run, grouped by facet value, estimators in the paper's order.

  Without facet fields the rows keep the order of `runs`. `best_final` is the
  best final mean value among the runs of the row's panel (facet value).
  """
  labels = runs_lib.curve_labels(runs, facet)
  # An estimator's option at its default says nothing the estimator column does not.
  extra = [f for f in runs_lib.varying_fields(runs, exclude=("estimator", *runs_lib.TABLE_FIELDS))
           if not runs_lib.option_left_at_default(runs, f)]
  groups = runs_lib.facet_groups(runs, facet)
  order = list(range(len(runs)))
  if facet:
    order = [i for _, members in groups for i in runs_lib.in_paper_order(runs, members)]
  best_final = {}
  for _, members in groups:
    best = max(float(runs_lib.nan_stat(np.nanmean, runs[i]["values"][-1])) for i in members)
    best_final.update({i: best for i in members})
  return [_row(runs[i], labels[i], facet, extra, best_final[i]) for i in order]


def _gap(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
  """How far the mean curve of run `a` is from `b`'s over their common steps."""
  steps, in_a, in_b = np.intersect1d(a["steps"], b["steps"], return_indices=True)
  if not steps.size:
    return None
  gap = runs_lib.mean_curve(a["values"][in_a]) - runs_lib.mean_curve(b["values"][in_b])
  widest = int(np.nanargmax(np.abs(gap))) if np.isfinite(gap).any() else len(gap) - 1
  spread = max(float(runs_lib.nan_stat(np.nanstd, run["values"][index[-1]]))
               for run, index in ((a, in_a), (b, in_b)))
  return {"evaluations": int(steps.size), "largest": float(abs(gap[widest])),
          "largest_step": int(steps[widest]), "last_step": int(steps[-1]),
          "last": float(gap[-1]), "std_at_last": spread}


def curve_gaps(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()
               ) -> list[dict[str, Any]]:
  """Every pair of runs of a panel (estimators in the paper's order): the gap
  between their mean curves over seeds at the steps both evaluated.

  Each entry: the panel title, the two curve labels `a` and `b`, the number
  of common evaluations, the largest |mean_a - mean_b| and its step, the
  signed gap mean_a - mean_b at the last common step, and the larger of the
  two standard deviations over seeds (ddof = 0) there. Pairs without a
  common step are left out.
  """
  facet = parse_facet(facet)
  labels = runs_lib.curve_labels(runs, facet)
  gaps = []
  for values, members in runs_lib.facet_groups(runs, facet):
    panel = runs_lib.facet_title(facet, values)
    members = runs_lib.in_paper_order(runs, members)
    for n, i in enumerate(members):
      for j in members[n + 1:]:
        gap = _gap(runs[i], runs[j])
        if gap is not None:
          gaps.append({"panel": panel, "a": labels[i], "b": labels[j], **gap})
  return gaps


def gaps_table(gaps: Sequence[dict[str, Any]]) -> str:
  """`curve_gaps` as a Markdown table."""
  if not gaps:
    return ""
  lines = ["| panel | curve a | curve b | common evaluations | largest abs(a - b) | at step "
           "| a - b at the last common step | that step | larger std over seeds there |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for g in gaps:
    lines.append(f"| {g['panel'] or '-'} | {g['a']} | {g['b']} | {g['evaluations']} | "
                 f"{g['largest']:.4f} | {g['largest_step']:,} | {g['last']:+.4f} | "
                 f"{g['last_step']:,} | {g['std_at_last']:.4f} |")
  return "\n".join(lines) + "\n"


def _steps_text(steps: int | None) -> str:
  return "not reached" if steps is None else f"{steps:,}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a Markdown table (the descriptive columns first)."""
  if not rows:
    return ""
  names = list(rows[0]["columns"])
  with_lsr = any(runs_lib.lsr_limits(r) for r in rows)
  header = names + ["steps", "seeds", "final value (mean)", "std over seeds",
                    "min – max over seeds", "optimum", "fraction of optimum",
                    "steps to 95%", "steps to 95% of best final", "diverged (seed@step)"]
  if with_lsr:
    header[-1:-1] = ["optimal ESR with this LSR", "fraction of it"]
  align = ["---"] * len(names) + ["---:"] * (len(header) - len(names) - 1) + ["---"]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    div = ", ".join(f"{s}@{t:,}" for s, t in r["diverged"]) or "none"
    cells = [r["columns"].get(n, "-") for n in names] + [
        f"{r['steps']:,}", str(r["seeds"]), f"{r['final_mean']:.4f}", f"{r['final_std']:.4f}",
        f"{r['final_min']:.4f} – {r['final_max']:.4f}", f"{r['optimal']:.4f}",
        f"{r['fraction_of_optimum']:.3f}", _steps_text(r["steps_to_95"]),
        _steps_text(r["steps_to_95_best"]), div]
    if with_lsr:
      best = r["best_with_lsr"]
      cells[-1:-1] = [f"{best:.4f}", f"{r['final_mean'] / best:.3f}" if best else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


DEFINITIONS = (
    "Final value: the policy value (mean aggregated observed reward over the "
    "evaluation contexts, deterministic ESR top-K) at the last evaluated step; "
    "mean, standard deviation (population, ddof = 0) and min – max over seeds. "
    "Fraction of optimum: final mean / the value of the optimal ESR (top-K by "
    "true relevance) with the optimal LSR. Steps to 95%: the first evaluated "
    "step at which the mean curve over seeds is >= 0.95 x the optimum (\"not "
    "reached\" otherwise). Steps to 95% of best final: the same against 0.95 x "
    "the best final mean value among the runs of the same panel (facet value), "
    "the reference of the paper's figures. Diverged: seed@step where a seed's "
    "loss or gradient became non-finite; that seed keeps its last finite "
    "parameters. Where a table has them: optimal ESR with this LSR, the value "
    "of the optimal ESR followed by the run's own late-stage ranker (the most "
    "the ESR can reach when the LSR is not optimal), and the final mean as a "
    "fraction of it.")


GAP_DEFINITIONS = (
    "Gaps between curves: for each pair of runs of a panel, the mean curves "
    "over seeds compared at the steps both runs evaluated: the largest "
    "absolute difference and the step where it occurs, the signed difference "
    "(curve a - curve b) at the last common step, and the larger of the two "
    "standard deviations over seeds (ddof = 0) at that step.")


def markdown_document(rows: Sequence[dict[str, Any]], title: str | None = None,
                      notes: Sequence[str] = (), gaps: Sequence[dict[str, Any]] = ()) -> str:
  """Title, notes, the table and the definitions of its columns (and the
  gaps table with its definition, when `gaps` are given)."""
  parts = []
  if title:
    parts.append(f"# {title}\n")
  parts.extend(f"{note}\n" for note in notes)
  parts.append(markdown_table(rows))
  parts.append(DEFINITIONS + "\n")
  if gaps:
    parts.append(gaps_table(gaps))
    parts.append(GAP_DEFINITIONS + "\n")
  return "\n".join(parts)


def write_report(workdirs: Sequence[str], out: str | None = None,
                 title: str | None = None, markdown: str | None = None,
                 stream=sys.stdout, facet: Sequence[str] = (),
                 notes: Sequence[str] = (), up_to_step: int | None = None,
                 gaps: bool = False) -> str:
  """Plots `workdirs` to `out` (default `<first workdir>/curves.png`), prints
  the table, and optionally writes it (with `title`, `notes` and the
  definitions) as Markdown. Returns the PNG path. `up_to_step`: see
  `runs.load_run`; `gaps`: also the table of `curve_gaps`.

  Raises:
    ReportError: no workdirs, a workdir without config.json or evaluation
      records (up to `up_to_step`), or an unknown facet field.
  """
  if not workdirs:
    raise ReportError("no run directories to report on")
  facet = parse_facet(facet)
  runs = [load_run(w, up_to_step) for w in workdirs]
  rows = summary_rows(runs, facet)  # Checks the facet fields before plotting.
  out = out or os.path.join(workdirs[0], "curves.png")
  plots.plot(runs, out, title, facet)
  print(markdown_table(rows), file=stream, end="")
  pair_gaps = curve_gaps(runs, facet) if gaps else []
  if pair_gaps:
    print("\n" + gaps_table(pair_gaps), file=stream, end="")
  if markdown:
    os.makedirs(os.path.dirname(os.path.abspath(markdown)), exist_ok=True)
    metrics_log.atomic_write_text(markdown, markdown_document(rows, title, notes, pair_gaps))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cpg_jax.experiments.report",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default=None, help="PNG path (default DIR/curves.png)")
  parser.add_argument("--title", default=None)
  parser.add_argument("--markdown", default=None, help="also write the table here")
  parser.add_argument("--facet", default=None,
                      help="FIELD[,FIELD]: one panel per value (K, L, M, LSR or any "
                           "config field, e.g. num_candidates or env.name)")
  parser.add_argument("--up_to_step", type=int, default=None,
                      help="read every run only up to this step (compare runs of "
                           "different lengths at one step)")
  parser.add_argument("--gaps", action="store_true",
                      help="also a table of how far apart each pair of mean curves "
                           "of a panel is")
  args = parser.parse_args(argv)
  # `ROOT/*` also matches a sweep's curves.png and results.md: skip plain files.
  workdirs = [w for w in args.workdirs if not os.path.isfile(w)]
  for skipped in sorted(set(args.workdirs) - set(workdirs)):
    print(f"note: skipping {skipped}: a file, not a run directory", file=sys.stderr)
  try:
    png = write_report(workdirs, args.out, args.title, args.markdown,
                       facet=parse_facet(args.facet), up_to_step=args.up_to_step,
                       gaps=args.gaps)
  except UserError as e:
    print(user_errors.format_error(e), file=sys.stderr)
    return user_errors.EXIT_USER_ERROR
  print(f"Learning curves: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
