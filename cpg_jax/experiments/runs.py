"""Runs as the report sees them: workdirs loaded, labelled, faceted.

A *run* is the dict `load_run` returns for a `train.py` workdir: its config
(config.json), the evaluated steps and the policy value of every seed at each
(metrics.jsonl, through `training.metrics_log.EvalRecord`), the reference
values and the diverged seeds. The table (`experiments.report`) and the
figure (`experiments.plots`) are both drawn from lists of runs.

NumPy and the standard library only (no JAX, no matplotlib).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Sequence

import numpy as np

from cpg_jax.training import config as config_lib
from cpg_jax.training import metrics_log
from cpg_jax.user_errors import UserError

ESTIMATOR_NAMES = {"vpg": "V-PG", "vpg_swr": "V-PG-SwR", "ca_pg": "CA-PG",
                   "ca_pg_swr": "CA-PG-SwR", "ca_pg_exact": "CA-PG-exact",
                   "ca_pg_ss": "CA-PG-SS"}
# One colour per estimator in every figure: the paper's for its four, then
# orange and purple for the exact and successive-sampling marginals.
ESTIMATOR_COLORS = {"vpg": "#1f77b4", "vpg_swr": "#2ca02c", "ca_pg": "#d62728",
                    "ca_pg_swr": "#e377c2", "ca_pg_exact": "#ff7f0e", "ca_pg_ss": "#9467bd"}
# Colours for estimators without a fixed one, in order of first appearance.
SPARE_COLORS = ("#8c564b", "#17becf", "#bcbd22", "#7f7f7f")
# Fields that say how a run was executed or recorded, not what it trains:
# never worth a legend label.
NOT_IN_LABELS = frozenset({
    "num_steps", "eval_every", "eval_contexts", "eval_batch_size", "log_every",
    "checkpoint_every", "keep_checkpoints", "num_seeds", "seed", "score_path",
    "item_block_size", "dense_budget_mb", "top_k_kernel", "tensorboard"})
# Fields a sweep sets from the estimator (experiments/paper.py's learning-rate
# rule): left out of a label when they follow from the estimator.
FOLLOWS_THE_ESTIMATOR = frozenset({"learning_rate"})
# Options that only one estimator reads (numerics.estimators.get_estimator):
# a run of another estimator has no value for them, NOT_APPLICABLE, so a
# `ca_pg` run does not show ca_pg_exact's node count in tables or labels.
ESTIMATOR_OPTIONS = {"swr_combine": "ca_pg_swr", "exact_nodes": "ca_pg_exact",
                     "exact_tail": "ca_pg_exact"}
NOT_APPLICABLE = "-"
# A label longer than this names the workdir instead.
MAX_LABEL_CHARS = 40
# Short names of config fields, for facet arguments, panel titles and columns.
SHORT_NAMES = {"num_candidates": "K", "num_outputs": "L", "num_models": "M", "lsr": "LSR",
               "learning_rate": "lr", "env.name": "environment"}
ALIASES = {short: field for field, short in SHORT_NAMES.items()}
TABLE_FIELDS = ("num_candidates", "num_outputs", "num_models", "lsr", "learning_rate")
_UNSET = object()


class ReportError(UserError, ValueError):
  """A workdir cannot be reported on, or a report argument is wrong."""


def load_run(workdir: str, up_to_step: int | None = None) -> dict[str, Any]:
  """config.json and metrics.jsonl of a workdir, with arrays per field.

  `up_to_step`: only the evaluations at steps <= it, as if the run had stopped
  there (runs of different lengths compared at one step).
  """
  config_path = os.path.join(workdir, metrics_log.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ReportError(f"{workdir}: no {metrics_log.CONFIG_FILE}; is it a train.py workdir?")
  with open(config_path) as f:
    config = _with_defaults(json.load(f))
  records = metrics_log.read_records(workdir)
  if not records:
    raise ReportError(f"{workdir}: {metrics_log.METRICS_FILE} has no evaluation records yet "
                      "(the run has not reached its first evaluation)")
  if up_to_step is not None:
    records = [r for r in records if r.step <= up_to_step]
    if not records:
      raise ReportError(f"{workdir}: no evaluation at or before step {up_to_step}")
  last = records[-1]
  return {"workdir": workdir, "config": config,
          "steps": np.array([r.step for r in records]),
          "values": np.stack([r.seed_values("policy_value") for r in records]),  # [evals, seeds]
          "optimal": last.optimal_value,
          # The optimal ESR under the run's own LSR: what the ESR can reach
          # when the LSR is not optimal (e.g. uniform or anti, experiment b).
          "best_with_lsr": last.optimal_esr_value,
          "diverged": list(last.diverged)}


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
  """`config` with the fields it lacks set to today's defaults.

  A workdir written before a field existed ran with the behaviour that the
  field's default keeps (new fields default to the old behaviour), so an
  older run compares with a newer one on the fields that really differ.
  """
  filled = json.loads(json.dumps(config))
  for field, value in config_lib.flatten_config(config_lib.default_config()).items():
    node = filled
    *parents, leaf = field.split(".")
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(leaf, list(value) if isinstance(value, tuple) else value)
  return filled


def has_results(workdir: str) -> bool:
  """Whether `workdir` has a config.json and at least one evaluation record."""
  return (os.path.exists(os.path.join(workdir, metrics_log.CONFIG_FILE))
          and bool(metrics_log.read_records(workdir)))


def parse_facet(text: str | Sequence[str] | None) -> tuple[str, ...]:
  """`"K"`, `"num_outputs,num_models"` or a list of fields as config field names."""
  if not text:
    return ()
  parts = text.split(",") if isinstance(text, str) else list(text)
  return tuple(ALIASES.get(p.strip(), p.strip()) for p in parts if p.strip())


def config_value(config: dict[str, Any], field: str, default: Any = _UNSET) -> Any:
  """The value of a dotted field of a config.json dict (lists become tuples;
  NOT_APPLICABLE for an option of another estimator)."""
  if not _applies(config, field):
    return NOT_APPLICABLE
  node: Any = config
  for part in field.split("."):
    if not isinstance(node, dict) or part not in node:
      if default is not _UNSET:
        return default
      raise KeyError(field)
    node = node[part]
  return tuple(node) if isinstance(node, list) else node


def _applies(config: dict[str, Any], field: str) -> bool:
  return field not in ESTIMATOR_OPTIONS or config.get("estimator") == ESTIMATOR_OPTIONS[field]


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
  """Dotted fields of a config.json dict, lists as tuples (hashable),
  NOT_APPLICABLE for the options of another estimator."""
  return {field: NOT_APPLICABLE if not _applies(config, field) else _flatten_value(value)
          for field, value in config_lib.flatten_config(config).items()}


def _flatten_value(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple):
    return "(" + ", ".join(format_value(v) for v in value) + ")"
  return str(value)


def estimator_name(name: str) -> str:
  """The paper's name of an estimator (V-PG, CA-PG-SwR, ...)."""
  return ESTIMATOR_NAMES.get(name, name)


def estimator_rank(run: dict[str, Any]) -> int:
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


def option_left_at_default(runs: Sequence[dict[str, Any]], field: str) -> bool:
  """Whether `field` is an estimator's option (ESTIMATOR_OPTIONS) that every
  run of its estimator leaves at today's default: then it varies between
  `runs` only because other estimators have no value for it."""
  if field not in ESTIMATOR_OPTIONS:
    return False
  default = _flatten_value(config_lib.flatten_config(config_lib.default_config())[field])
  return all(config_value(run["config"], field, None) in (NOT_APPLICABLE, default)
             for run in runs)


def determined_by_estimator(runs: Sequence[dict[str, Any]], field: str) -> bool:
  seen: dict[str, set] = {}
  for run in runs:
    key = run["config"].get("estimator")
    seen.setdefault(key, set()).add(repr(config_value(run["config"], field, None)))
  return all(len(v) == 1 for v in seen.values())


def curve_labels(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()) -> list[str]:
  """One legend label per run: the estimator, then what else tells runs apart.

  Left out: fields in `facet` (the panel title names them), the learning
  rate and the estimators' own options where they follow from the estimator
  (`FOLLOWS_THE_ESTIMATOR`, `ESTIMATOR_OPTIONS`; any other field, a baseline
  for example, is named even when only one estimator uses it), an option in
  the label of a run whose estimator does not read it, and fields that say
  how a run was executed rather than what it trains (`NOT_IN_LABELS`, e.g.
  eval_contexts, checkpoint_every). A label that would still be longer than
  `MAX_LABEL_CHARS` is the estimator and the workdir's name instead.
  """
  estimator_varies = "estimator" in varying_fields(runs)
  differing = [f for f in varying_fields(runs, exclude=("estimator", *facet))
               if f not in NOT_IN_LABELS
               and not ((f in FOLLOWS_THE_ESTIMATOR or f in ESTIMATOR_OPTIONS)
                        and estimator_varies and determined_by_estimator(runs, f))]
  labels = []
  for run in runs:
    estimator = estimator_name(str(run["config"].get("estimator", "?")))
    parts = [estimator]
    parts += [f"{SHORT_NAMES.get(f, f)}={format_value(config_value(run['config'], f, None))}"
              for f in differing if _applies(run["config"], f)]
    label = ", ".join(parts)
    labels.append(label if len(label) <= MAX_LABEL_CHARS
                  else f"{estimator} ({workdir_name(run)})")
  # Two runs of one panel with the same label: tell them apart by workdir.
  for _, members in facet_groups(runs, facet):
    names = [labels[i] for i in members]
    for i in members:
      if names.count(labels[i]) > 1 and not labels[i].endswith(f"({workdir_name(runs[i])})"):
        labels[i] += f" ({workdir_name(runs[i])})"
  return labels


def workdir_name(run: dict[str, Any]) -> str:
  return os.path.basename(os.path.normpath(run["workdir"]))


def estimator_colors(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
  """The colour of every estimator among `runs` (fixed ones, then spares)."""
  colors = {}
  for run in sorted(runs, key=estimator_rank):
    name = str(run["config"].get("estimator", "?"))
    if name not in colors:
      spare = [c for c in SPARE_COLORS if c not in colors.values()]
      colors[name] = ESTIMATOR_COLORS.get(name) or (spare or SPARE_COLORS)[0]
  return colors


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def facet_groups(runs: Sequence[dict[str, Any]], facet: Sequence[str]
                 ) -> list[tuple[tuple[Any, ...], list[int]]]:
  """Runs grouped by their values of the `facet` fields, as (values, indices).

  Groups are ordered by value: numerically where a field is numeric, else in
  order of first appearance. Without facet fields, one group of all runs.
  Raises ReportError if a run's config lacks a facet field.
  """
  keys = []
  for run in runs:
    try:
      keys.append(tuple(config_value(run["config"], f) for f in facet))
    except KeyError as e:
      raise ReportError(
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


def nan_stat(fn, values):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return fn(values)


def mean_curve(values: np.ndarray) -> np.ndarray:
  """The mean over seeds `[evals]` of `values` `[evals, seeds]`, NaN seeds left out."""
  return nan_stat(lambda v: np.nanmean(v, axis=1), values)


def in_paper_order(runs: Sequence[dict[str, Any]], indices: Sequence[int]) -> list[int]:
  """`indices` into `runs`, estimators in the paper's order, ties by index."""
  return sorted(indices, key=lambda i: (estimator_rank(runs[i]), i))


def lsr_limits(run_or_row: dict[str, Any]) -> bool:
  """Whether the run's LSR keeps the ESR below the optimum (a second line)."""
  optimum = float(run_or_row["optimal"])
  best = float(run_or_row["best_with_lsr"])
  return abs(best - optimum) > 1e-6 * max(1.0, abs(optimum))


def seed_text(runs: Sequence[dict[str, Any]]) -> str:
  counts = sorted({run["values"].shape[1] for run in runs})
  seeds = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}")
  return f"{seeds} seed" + ("" if counts == [1] else "s")


def default_title(runs: Sequence[dict[str, Any]], facet: Sequence[str] = ()) -> str:
  """One line: the estimator where all runs share it (else "Policy value"),
  the environment and the K, L, M and LSR that all runs share."""
  varying = set(varying_fields(runs)) | set(facet)
  first = runs[0]["config"]
  head = (estimator_name(str(first.get("estimator", "?"))) if "estimator" not in varying
          else "Policy value")
  environment = None if "env.name" in varying else config_value(first, "env.name", None)
  common = [f for f in ("num_candidates", "num_outputs", "num_models", "lsr")
            if f not in varying and config_value(first, f, None) is not None]
  shared = facet_title(common, [config_value(first, f) for f in common])
  return head + (f" on {environment}" if environment else "") + (f": {shared}" if shared else "")
