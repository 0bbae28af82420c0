"""Learning curves and a results table from run directories.

  python -m cpg_jax.report DIR [DIR ...] [--out curves.png] [--title TEXT]
      [--markdown table.md] [--facet FIELD[,FIELD]]

Each DIR is a workdir of `train.py` (config.json + metrics.jsonl).

The plot shows, per run, the mean policy value over seeds with a band of one
standard deviation, the optimum and its 95% line, and an "x" where a seed
diverged. `--facet num_candidates` (or K; L, M and LSR are accepted too)
draws one panel per distinct value of those config fields, each with its own
optimum lines; within a panel there is one curve per remaining difference
between the runs (normally the estimator), coloured the same in every panel.

The table (printed; `--markdown` also writes it with a title and the
definitions) gives, per run: the estimator, K, L, M, the LSR, the learning
rate and any other config field that differs between the runs; the final
policy value as mean, standard deviation (ddof = 0) and min-max over seeds;
the optimum and the fraction of it reached; the first evaluated step at which
the mean curve over seeds reached 95% of the optimum; and the diverged seeds.
Bad inputs (a directory without config.json, no evaluation records, an
unknown facet field) end with exit code 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from cpg_jax import config as config_lib
from cpg_jax import metrics_log

ESTIMATOR_NAMES = {"vpg": "V-PG", "vpg_swr": "V-PG-SwR", "ca_pg": "CA-PG",
                   "ca_pg_swr": "CA-PG-SwR"}
# Short names of config fields, for facet arguments, panel titles and columns.
SHORT_NAMES = {"num_candidates": "K", "num_outputs": "L", "num_models": "M", "lsr": "LSR",
               "learning_rate": "lr", "env.name": "environment"}
ALIASES = {short: field for field, short in SHORT_NAMES.items()}
TABLE_FIELDS = ("num_candidates", "num_outputs", "num_models", "lsr", "learning_rate")
_UNSET = object()


def load_run(workdir: str) -> dict[str, Any]:
  """config.json and metrics.jsonl of a workdir, with arrays per field."""
  config_path = os.path.join(workdir, metrics_log.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir}: no {metrics_log.CONFIG_FILE}; is it a train.py workdir?")
  with open(config_path) as f:
    config = json.load(f)
  records = metrics_log.read_metrics(workdir)
  if not records:
    raise ValueError(f"{workdir}: {metrics_log.METRICS_FILE} has no evaluation records yet "
                     "(the run has not reached its first evaluation)")
  steps = np.array([r["step"] for r in records])
  values = np.array([[np.nan if v is None else v for v in r["policy_value"]]
                     for r in records], dtype=np.float64)  # [evals, seeds]
  return {"workdir": workdir, "config": config, "steps": steps, "values": values,
          "optimal": records[-1]["optimal_value"],
          # The optimal ESR under the run's own LSR: what the ESR can reach
          # when the LSR is not optimal (e.g. uniform or anti, experiment b).
          "best_with_lsr": records[-1].get("optimal_esr_value", records[-1]["optimal_value"]),
          "diverged": records[-1]["diverged"]}


def has_results(workdir: str) -> bool:
  """Whether `workdir` has a config.json and at least one evaluation record."""
  return (os.path.exists(os.path.join(workdir, metrics_log.CONFIG_FILE))
          and bool(metrics_log.read_metrics(workdir)))


def parse_facet(text: str | Sequence[str] | None) -> tuple[str, ...]:
  """`"K"`, `"num_outputs,num_models"` or a list of fields as config field names."""
  if not text:
    return ()
  parts = text.split(",") if isinstance(text, str) else list(text)
  return tuple(ALIASES.get(p.strip(), p.strip()) for p in parts if p.strip())


def config_value(config: dict[str, Any], field: str, default: Any = _UNSET) -> Any:
  """The value of a dotted field of a config.json dict (lists become tuples)."""
  node: Any = config
  for part in field.split("."):
    if not isinstance(node, dict) or part not in node:
      if default is not _UNSET:
        return default
      raise KeyError(field)
    node = node[part]
  return tuple(node) if isinstance(node, list) else node


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
  """Dotted fields of a config.json dict, lists as tuples (hashable)."""
  return {field: tuple(value) if isinstance(value, list) else value
          for field, value in config_lib.flatten_config(config).items()}


def format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple):
    return "(" + ", ".join(format_value(v) for v in value) + ")"
  return str(value)


def estimator_name(name: str) -> str:
  """The paper's name of an estimator (V-PG, CA-PG-SwR, ...)."""
  return ESTIMATOR_NAMES.get(name, name)


def _estimator_rank(run: dict[str, Any]) -> int:
  names = list(ESTIMATOR_NAMES)
  name = run["config"].get("estimator")
  return names.index(name) if name in names else len(names)


def varying_fields(runs: Sequence[dict[str, Any]], exclude: Sequence[str] = ()) -> list[str]:
  """Config fields whose values differ between `runs`, in config order."""
  flats = [_flatten(run["config"]) for run in runs]
  fields: list[str] = []
  for flat in flats:
    fields.extend(f for f in flat if f not in fields)
  return [f for f in fields if f not in exclude
          and len({repr(flat.get(f, "<absent>")) for flat in flats}) > 1]


def _determined_by_estimator(runs: Sequence[dict[str, Any]], field: str) -> bool:
  seen: dict[str, set] = {}
  for run in runs:
    key = run["config"].get("estimator")
    seen.setdefault(key, set()).add(repr(config_value(run["config"], field, None)))
  return all(len(v) == 1 for v in seen.values())


def curve_labels(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()) -> list[str]:
  """One legend label per run: the estimator, then what else tells runs apart.

  Fields in `facet` are left out (the panel title names them), and so are
  fields that follow from the estimator (the paper learning rate).
  """
  estimator_varies = "estimator" in varying_fields(runs)
  differing = [f for f in varying_fields(runs, exclude=("estimator", *facet))
               if not (estimator_varies and _determined_by_estimator(runs, f))]
  labels = []
  for run in runs:
    parts = [estimator_name(str(run["config"].get("estimator", "?")))]
    parts += [f"{SHORT_NAMES.get(f, f)}={format_value(config_value(run['config'], f, None))}"
              for f in differing]
    labels.append(", ".join(parts))
  # Two runs of one panel with the same label: tell them apart by workdir.
  for _, members in facet_groups(runs, facet):
    names = [labels[i] for i in members]
    for i in members:
      if names.count(labels[i]) > 1:
        labels[i] += f" ({os.path.basename(os.path.normpath(runs[i]['workdir']))})"
  return labels


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def facet_groups(runs: Sequence[dict[str, Any]], facet: Sequence[str]
                 ) -> list[tuple[tuple[Any, ...], list[int]]]:
  """Runs grouped by their values of the `facet` fields, as (values, indices).

  Groups are ordered by value: numerically where a field is numeric, else in
  order of first appearance. Without facet fields, one group of all runs.
  Raises ValueError if a run's config lacks a facet field.
  """
  keys = []
  for run in runs:
    try:
      keys.append(tuple(config_value(run["config"], f) for f in facet))
    except KeyError as e:
      raise ValueError(
          f"{run['workdir']}: config.json has no field {e.args[0]!r} to facet by; facet "
          "fields are config fields such as num_candidates (K), num_outputs (L), "
          "num_models (M), lsr, env.name") from None
  first_seen: dict[Any, int] = {}
  for key in keys:
    for i, v in enumerate(key):
      first_seen.setdefault((i, repr(v)), len(first_seen))

  def order(key):
    return tuple((0, float(v), 0) if _is_number(v) else (1, 0.0, first_seen[(i, repr(v))])
                 for i, v in enumerate(key))

  groups: dict[Any, list[int]] = {}
  for index, key in enumerate(keys):
    groups.setdefault(key, []).append(index)
  return sorted(groups.items(), key=lambda item: order(item[0]))


def facet_title(facet: Sequence[str], values: Sequence[Any]) -> str:
  """`K = 5`, `L = 1, M = 5`, `LSR: noisy`."""
  parts = []
  for field, value in zip(facet, values):
    short = SHORT_NAMES.get(field, field)
    parts.append(f"{short}: {value}" if isinstance(value, str)
                 else f"{short} = {format_value(value)}")
  return ", ".join(parts)


def steps_to_fraction(steps: np.ndarray, mean_curve: np.ndarray, target: float):
  """First evaluated step where the mean curve reaches `target`, else None."""
  reached = np.nonzero(mean_curve >= target)[0]
  return int(steps[reached[0]]) if reached.size else None


def _nan_stat(fn, values):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return fn(values)


def summary_rows(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()
                 ) -> list[dict[str, Any]]:
  """One row per run, grouped by facet value, estimators in the paper's order.

  Without facet fields the rows keep the order of `runs`.
  """
  labels = curve_labels(runs, facet)
  extra = varying_fields(runs, exclude=("estimator", *TABLE_FIELDS))
  order = list(range(len(runs)))
  if facet:
    order = [i for _, members in facet_groups(runs, facet)
             for i in sorted(members, key=lambda i: (_estimator_rank(runs[i]), i))]
  rows = []
  for i in order:
    run = runs[i]
    final = run["values"][-1]
    mean_curve = _nan_stat(lambda v: np.nanmean(v, axis=1), run["values"])
    first_seed = int(run["config"].get("seed", 0))
    diverged = [(first_seed + s, step) for s, step in enumerate(run["diverged"])
                if step is not None]
    columns = {"estimator": estimator_name(str(run["config"].get("estimator", "?")))}
    for field in (*TABLE_FIELDS, *extra):
      columns[SHORT_NAMES.get(field, field)] = format_value(
          config_value(run["config"], field, "-"))
    final_mean = float(_nan_stat(np.nanmean, final))
    rows.append({
        "run": labels[i],
        "workdir": run["workdir"],
        "columns": columns,
        "facet": {f: config_value(run["config"], f, None) for f in facet},
        "steps": int(run["steps"][-1]),
        "seeds": int(final.size),
        "final_mean": final_mean,
        "final_std": float(_nan_stat(np.nanstd, final)),
        "final_min": float(_nan_stat(np.nanmin, final)),
        "final_max": float(_nan_stat(np.nanmax, final)),
        "optimal": float(run["optimal"]),
        "best_with_lsr": float(run["best_with_lsr"]),
        "fraction_of_optimum": (final_mean / run["optimal"] if run["optimal"]
                                else float("nan")),
        "steps_to_95": steps_to_fraction(run["steps"], mean_curve, 0.95 * run["optimal"]),
        "diverged": diverged,
    })
  return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a Markdown table (the descriptive columns first)."""
  if not rows:
    return ""
  names = list(rows[0]["columns"])
  with_lsr = any(_lsr_limits(r) for r in rows)
  header = names + ["steps", "seeds", "final value (mean)", "std over seeds",
                    "min – max over seeds", "optimum", "fraction of optimum",
                    "steps to 95%", "diverged (seed@step)"]
  if with_lsr:
    header[-1:-1] = ["optimal ESR with this LSR", "fraction of it"]
  align = ["---"] * len(names) + ["---:"] * (len(header) - len(names) - 1) + ["---"]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    to95 = "not reached" if r["steps_to_95"] is None else f"{r['steps_to_95']:,}"
    div = ", ".join(f"{s}@{t:,}" for s, t in r["diverged"]) or "none"
    cells = [r["columns"].get(n, "-") for n in names] + [
        f"{r['steps']:,}", str(r["seeds"]), f"{r['final_mean']:.4f}", f"{r['final_std']:.4f}",
        f"{r['final_min']:.4f} – {r['final_max']:.4f}", f"{r['optimal']:.4f}",
        f"{r['fraction_of_optimum']:.3f}", to95, div]
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
    "reached\" otherwise). Diverged: seed@step where a seed's loss or gradient "
    "became non-finite; that seed keeps its last finite parameters. Where a "
    "table has them: optimal ESR with this LSR, the value of the optimal ESR "
    "followed by the run's own late-stage ranker (the most the ESR can reach "
    "when the LSR is not optimal), and the final mean as a fraction of it.")


def _lsr_limits(run_or_row: dict[str, Any]) -> bool:
  """Whether the run's LSR keeps the ESR below the optimum (a second line)."""
  optimum = float(run_or_row["optimal"])
  best = float(run_or_row["best_with_lsr"])
  return abs(best - optimum) > 1e-6 * max(1.0, abs(optimum))


def markdown_document(rows: Sequence[dict[str, Any]], title: str | None = None,
                      notes: Sequence[str] = ()) -> str:
  """Title, notes, the table and the definitions of its columns."""
  parts = []
  if title:
    parts.append(f"# {title}\n")
  parts.extend(f"{note}\n" for note in notes)
  parts.append(markdown_table(rows))
  parts.append(DEFINITIONS + "\n")
  return "\n".join(parts)


def _seed_text(runs: Sequence[dict[str, Any]]) -> str:
  counts = sorted({run["values"].shape[1] for run in runs})
  seeds = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}")
  return f"{seeds} seed" + ("" if counts == [1] else "s")


def default_title(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()) -> str:
  """"Policy value during training", naming K, L, M and LSR where all runs share them."""
  varying = set(varying_fields(runs)) | set(facet)
  common = [f for f in ("env.name", "num_candidates", "num_outputs", "num_models", "lsr")
            if f not in varying and config_value(runs[0]["config"], f, None) is not None]
  shared = facet_title(common, [config_value(runs[0]["config"], f) for f in common])
  return "Policy value during training" + (f" ({shared})" if shared else "")


def plot(runs: Sequence[dict[str, Any]], out: str, title: str | None = None,
         facet: Sequence[str] = ()) -> str:
  """Draws the learning curves of `runs` to `out`, one panel per facet value."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import patheffects
  from matplotlib.lines import Line2D
  from matplotlib.patches import Patch
  from matplotlib.ticker import FuncFormatter

  groups = facet_groups(runs, facet)
  labels = curve_labels(runs, facet)
  legend_order = sorted(range(len(runs)), key=lambda i: (_estimator_rank(runs[i]), i))
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  colors: dict[str, str] = {}
  for i in legend_order:
    colors.setdefault(labels[i], palette[len(colors) % len(palette)])

  n = len(groups)
  ncols = n if n <= 3 else (2 if n == 4 else 3)
  nrows = math.ceil(n / ncols)
  max_step = max(int(run["steps"][-1]) for run in runs)
  any_diverged = False
  any_lsr_limit = False
  outline = [patheffects.withStroke(linewidth=4.5, foreground="white")]
  with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10}):
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8.0, 5.0 * ncols + 0.8), 3.6 * nrows + 1.6),
                             squeeze=False, sharex=True, layout="constrained")
    for panel, (values, members) in enumerate(groups):
      ax = axes[panel // ncols][panel % ncols]
      for i in sorted(members, key=lambda i: (_estimator_rank(runs[i]), i)):
        run, color = runs[i], colors[labels[i]]
        mean = _nan_stat(lambda v: np.nanmean(v, axis=1), run["values"])
        std = _nan_stat(lambda v: np.nanstd(v, axis=1), run["values"])
        ax.plot(run["steps"], mean, color=color, linewidth=1.8)
        ax.fill_between(run["steps"], mean - std, mean + std, color=color, alpha=0.18,
                        linewidth=0)
        for step in (s for s in run["diverged"] if s is not None):
          any_diverged = True
          at = min(int(np.searchsorted(run["steps"], step)), len(mean) - 1)
          ax.plot(step, mean[at], marker="x", color=color, markersize=12, mew=2.6,
                  linestyle="none", zorder=5, path_effects=outline)
      optima = sorted({round(float(runs[i]["optimal"]), 9) for i in members})
      for optimum in optima:
        ax.axhline(optimum, color="black", linestyle="-", linewidth=1.1)
        ax.axhline(0.95 * optimum, color="0.35", linestyle="--", linewidth=1.1)
      for best in sorted({round(float(runs[i]["best_with_lsr"]), 9)
                          for i in members if _lsr_limits(runs[i])}):
        any_lsr_limit = True
        ax.axhline(best, color="tab:purple", linestyle=":", linewidth=1.6)
      head = facet_title(facet, values) if facet else ""
      optimum_text = ("optimum " if len(optima) == 1 else "optima ") + ", ".join(
          f"{o:.3f}" for o in optima)
      ax.set_title(f"{head}  ({optimum_text})" if head else optimum_text.capitalize())
      ax.grid(alpha=0.3)
      if max_step >= 10_000:
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
    for panel in range(n, nrows * ncols):
      axes[panel // ncols][panel % ncols].set_visible(False)
    for col in range(ncols):  # The lowest drawn panel of each column.
      bottom = axes[max(r for r in range(nrows) if r * ncols + col < n)][col]
      bottom.xaxis.set_tick_params(labelbottom=True)
      bottom.set_xlabel("gradient steps")
    fig.supylabel("policy value")
    lines_text = "solid black: optimum, dashed: 95% of the optimum" + (
        "; dotted: optimal ESR with this LSR" if any_lsr_limit else "")
    # One line only where the figure is wide enough for it.
    subtitle = (f"mean over {_seed_text(runs)}, band: ±1 std over seeds"
                + ("; " if ncols > 2 or (ncols == 2 and not any_lsr_limit) else "\n")
                + lines_text)
    fig.suptitle(f"{title or default_title(runs, facet)}\n{subtitle}", fontsize=13)

    handles = []
    for label in dict.fromkeys(labels[i] for i in legend_order):
      handles.append(Line2D([], [], color=colors[label], linewidth=2.2, label=label))
    handles.append(Patch(color="0.5", alpha=0.3, label="±1 std over seeds"))
    handles.append(Line2D([], [], color="black", linewidth=1.1, label="optimum"))
    handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.1,
                          label="95% of optimum"))
    if any_lsr_limit:
      handles.append(Line2D([], [], color="tab:purple", linestyle=":", linewidth=1.6,
                            label="optimal ESR with this LSR"))
    if any_diverged:
      handles.append(Line2D([], [], color="0.2", marker="x", linestyle="none",
                            markersize=9, mew=2, label="a seed diverged"))
    fig.legend(handles=handles, loc="outside lower center",
               ncol=min(len(handles), 4 if ncols < 3 else 8), frameon=False)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
  return out


def write_report(workdirs: Sequence[str], out: str | None = None,
                 title: str | None = None, markdown: str | None = None,
                 stream=sys.stdout, facet: Sequence[str] = (),
                 notes: Sequence[str] = ()) -> str:
  """Plots `workdirs` to `out` (default `<first workdir>/curves.png`), prints
  the table, and optionally writes it (with `title`, `notes` and the
  definitions) as Markdown. Returns the PNG path.

  Raises:
    FileNotFoundError: a workdir has no config.json.
    ValueError: no workdirs, no evaluation records, or an unknown facet field.
  """
  if not workdirs:
    raise ValueError("no run directories to report on")
  facet = parse_facet(facet)
  runs = [load_run(w) for w in workdirs]
  rows = summary_rows(runs, facet)  # Checks the facet fields before plotting.
  out = out or os.path.join(workdirs[0], "curves.png")
  plot(runs, out, title, facet)
  print(markdown_table(rows), file=stream, end="")
  if markdown:
    os.makedirs(os.path.dirname(os.path.abspath(markdown)), exist_ok=True)
    metrics_log.atomic_write_text(markdown, markdown_document(rows, title, notes))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cpg_jax.report",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default=None, help="PNG path (default DIR/curves.png)")
  parser.add_argument("--title", default=None)
  parser.add_argument("--markdown", default=None, help="also write the table here")
  parser.add_argument("--facet", default=None,
                      help="FIELD[,FIELD]: one panel per value (K, L, M, LSR or any "
                           "config field, e.g. num_candidates or env.name)")
  args = parser.parse_args(argv)
  # `ROOT/*` also matches a sweep's curves.png and results.md: skip plain files.
  workdirs = [w for w in args.workdirs if not os.path.isfile(w)]
  for skipped in sorted(set(args.workdirs) - set(workdirs)):
    print(f"note: skipping {skipped}: a file, not a run directory", file=sys.stderr)
  try:
    png = write_report(workdirs, args.out, args.title, args.markdown,
                       facet=parse_facet(args.facet))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Learning curves: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
