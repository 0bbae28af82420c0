"""The gradient study: bias, variance, SNR and cosine of every estimator.

  python -m cpg_jax.experiments.gradients --config=configs/synthetic.py \
      --estimators=vpg,ca_pg,ca_pg_exact,ca_pg_ss,ca_pg_swr --K=5,10,20,50,100 \
      --draws=200 --reference_draws=2000 --out=runs/gradients

At one parameter point (the initialisation of `--seed`, or the first seed of
the latest checkpoint of `--checkpoint=WORKDIR`), for each K and estimator,
`--draws` independent single-batch estimates g_i of the policy gradient
(-grad of the estimator's surrogate loss on one batch of the run's
batch_size rollouts, exactly as a training step computes it) are compared
with the true gradient g* of the policy value V:

  bias       ||E g - g*|| / ||g*||  (relative), from the sample means with
             their noise removed: ||mean - g*||^2 - tr Cov/D - tr Cov_ref/D_ref
             (floored at 0; ||g*||^2 likewise), with the standard error
             sqrt(tr Cov / D + tr Cov_ref / D_ref) / ||g*||: a bias below
             about 2 se is not resolved
  trace_cov  tr Cov(g) = sum over parameters of the sample variance (ddof 1)
  snr        ||E g|| / sqrt(tr Cov(g)), ||E g||^2 = ||mean||^2 - tr Cov/D
             (one draw's signal-to-noise)
  cosine     mean_i cos(g_i, g*)  (what one training step's direction gets)

g* is exact by enumeration where the system is tiny (N <= 8, one model, L =
1, the optimal or uniform LSR, no baseline or groups: `exact_moments`),
otherwise the mean of `--reference_draws` unbiased V-PG estimates, each over
every context with 4 rollouts and a leave-one-out baseline (`_reference`),
whose own standard error enters the bias's. Writes `<out>/gradients.md` (a
Markdown table), `<out>/gradients.json` and `<out>/gradients.png` (one panel
per measure, K on the x-axis).

JAX is imported inside the functions, as in the other experiment tools.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from cpg_jax import user_errors
from cpg_jax.experiments import runs as runs_lib

MEASURES = ("bias", "trace_cov", "snr", "cosine")
_TITLES = {"bias": "relative bias ||E g - g*|| / ||g*||", "trace_cov": "trace of Cov(g)",
           "snr": "SNR ||E g|| / sqrt(tr Cov)", "cosine": "mean cos(g, g*)"}
# Rollouts per context of the sampled reference (leave-one-out within them).
REFERENCE_GROUP = 4
# Rollouts per context of each estimator's stratified mean.
MEAN_GROUP = 2
# Beyond this catalogue size the true gradient is estimated, not enumerated.
MAX_ENUMERATED_ITEMS = 8
# Gradient draws per compiled call (vmapped): memory grows with it.
DEFAULT_CHUNK = 16


class StudyError(user_errors.UserError, ValueError):
  """A bad argument of the gradient study."""


def point_config(config, estimator: str, k: int):
  """`config` at one (estimator, K), one seed."""
  from cpg_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.apply_overrides(config.copy_and_resolve_references(), {
      "estimator": estimator, "num_candidates": k, "num_seeds": 1})


def build(config):
  """(pipeline, env) of a validated config."""
  from cpg_jax.training import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  return pipeline_lib.from_config(config)


def init_params(pipeline, seed: int, checkpoint: str | None = None):
  """The parameter point: seed `seed`'s initialisation, or seed 0 of the
  newest checkpoint of the run in `checkpoint` (same config)."""
  from cpg_jax.training import checkpointing, state as state_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if checkpoint is None:
    return state_lib.init_state(pipeline, seed).params
  checkpointer = checkpointing.Checkpointer(checkpoint, keep=1000, log=lambda _: None)
  step = checkpointer.latest_step()
  if step is None:
    raise StudyError(f"--checkpoint={checkpoint}: no checkpoint there")
  meta = checkpointer.restore_meta(step)
  seeds = int(meta["config"]["num_seeds"])
  abstract = state_lib.init_states(pipeline, list(range(seeds)))
  states, _ = checkpointer.restore(step, abstract)
  return jax.tree.map(lambda x: x[0], states.params)


def sample_estimates(pipeline, env, params, key, draws: int,
                     chunk: int = DEFAULT_CHUNK, context_ids=None) -> np.ndarray:
  """`draws` independent single-batch estimates, flattened: float64 `[draws, P]`
  (of the fixed `context_ids` `[batch]` when given, else sampled ones)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  def one(k):
    grads = step_lib.loss_and_gradient(pipeline, env, params, k, context_ids)[2]
    return -ravel_pytree(grads)[0]

  many = jax.jit(jax.vmap(one))
  # Whole chunks only (one compilation); the extra draws are dropped.
  keys = jax.random.split(key, -(-draws // chunk) * chunk)
  parts = [np.asarray(many(keys[i:i + chunk]), np.float64) for i in range(0, draws, chunk)]
  return np.concatenate(parts, axis=0)[:draws]


def can_enumerate(spec, num_items: int) -> bool:
  """Whether `exact_moments` applies to this run."""
  return (num_items <= MAX_ENUMERATED_ITEMS and spec.num_models == 1 and spec.num_outputs == 1
          and spec.lsr.name in ("optimal", "uniform") and spec.baseline == "none"
          and not spec.standardize_rewards and spec.group_size == 1)


def _enumeration(pipeline, env):
  """Every (context, ordered candidate list, output) with its LSR probability:
  int arrays `[n]`, `[n, K]`, `[n, 1]` and float `[n]`."""
  spec = pipeline.spec
  k = spec.num_candidates
  lists = np.array(list(itertools.permutations(range(env.num_items), k)), np.int32)
  contexts = np.repeat(np.arange(env.num_contexts, dtype=np.int32), len(lists))
  lists = np.tile(lists, (env.num_contexts, 1))
  if spec.lsr.name == "uniform":
    outputs = np.concatenate([lists[:, j:j + 1] for j in range(k)])
    return (np.tile(contexts, k), np.tile(lists, (k, 1)), outputs,
            np.full(len(outputs), 1.0 / k))
  q = np.asarray(env.expected_score(contexts, lists))
  outputs = np.take_along_axis(lists, np.argmax(q, axis=1)[:, None], axis=1)
  return contexts, lists, outputs, np.ones(len(lists))


def exact_moments(pipeline, env, params) -> dict[str, Any]:
  """The true gradient and the estimator's exact mean and tr Cov, by enumeration.

  Rows of a batch are independent (context uniform, candidates from the PL
  policy, the LSR, a Gaussian reward), and the estimator's loss is linear in
  each reward: a row's estimate is g = r h(x, C, a), h = -grad of its loss at
  r = 1, so E g = E[m h] and E||g||^2 = E[(m^2 + sd^2) ||h||^2] (m, sd the
  reward's mean and standard deviation); a batch of B rows has tr Cov / B.

  Returns:
    {"true": [P], "mean": [P], "trace_cov": float} (float64).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  from cpg_jax.numerics.rollout import Rollout  # pylint: disable=g-import-not-at-top
  contexts, lists, outputs, lsr_prob = _enumeration(pipeline, env)
  mean = np.asarray(env.mean_reward(contexts, outputs), np.float64)[:, 0]
  std = np.asarray(env.reward_std(contexts, outputs), np.float64)[:, 0]
  weights = pipeline.position_weights()
  flat, unravel = ravel_pytree(params)

  def log_list_prob(p, x, c):  # PL probability of the ordered list c: [].
    s = pipeline.score_table(unravel(p), x[None]).values[0, 0]  # dense, [N]
    onehot = jax.nn.one_hot(c, s.shape[0], dtype=s.dtype)  # [K, N]
    before = jnp.cumsum(onehot, axis=0) - onehot  # items taken before slot k
    lse = jax.nn.logsumexp(jnp.where(before > 0, -jnp.inf, s[None]), axis=1)
    return jnp.sum(s[c] - lse)

  def h(x, c, a):  # -grad of one row's loss at reward 1: [P].
    rollout = Rollout(candidates=c[None], outputs=a[None], rewards=jnp.ones((1, 1)),
                      position_weights=weights)
    loss = lambda p: pipeline.loss_fn(pipeline.score_table(unravel(p), x[None]), rollout)
    return -jax.grad(loss)(flat)

  args = (jnp.asarray(contexts), jnp.asarray(lists), jnp.asarray(outputs))
  hs = np.asarray(jax.jit(jax.vmap(h))(*args), np.float64)  # [n, P]
  probs = np.exp(np.asarray(jax.jit(jax.vmap(log_list_prob, (None, 0, 0)))(
      flat, args[0], args[1]), np.float64)) * lsr_prob / env.num_contexts
  value = lambda p: jnp.sum(jnp.exp(jax.vmap(log_list_prob, (None, 0, 0))(p, *args[:2]))
                            * jnp.asarray(lsr_prob * mean / env.num_contexts, p.dtype))
  true = np.asarray(jax.jit(jax.grad(value))(flat), np.float64)
  row_mean = probs @ (mean[:, None] * hs)
  second = probs @ ((mean ** 2 + std ** 2) * np.sum(hs ** 2, axis=1))
  trace = (second - row_mean @ row_mean) / pipeline.spec.batch_size
  return {"true": true, "mean": row_mean, "trace_cov": float(trace)}


def summarise(estimates: np.ndarray, reference: np.ndarray, reference_trace: float = 0.0,
              mean: np.ndarray | None = None, mean_trace: float | None = None
              ) -> dict[str, float]:
  """The four measures of `estimates` `[D, P]` against `reference` `[P]`.

  `reference_trace`: tr Cov of the reference itself (0 when exact; tr Cov /
  D_ref for a sampled mean), added to the bias's standard error. `mean`,
  `mean_trace`: a better estimate of the estimator's expectation `[P]` and
  the tr Cov of that estimate (the stratified means of `run_study`); by
  default the mean of `estimates` and tr Cov / D.
  """
  draws = estimates.shape[0]
  trace = float(np.sum(estimates.var(axis=0, ddof=1)))
  if mean is None:
    mean, mean_trace = estimates.mean(axis=0), trace / draws
  # Squared norms of sampled means carry their noise, tr Cov of the mean:
  # subtracted (unbiased estimates of the squared norms, floored at 0).
  ref_norm = math.sqrt(max(float(reference @ reference) - reference_trace, 1e-300))
  signal = math.sqrt(max(float(mean @ mean) - mean_trace, 0.0))
  gap = mean - reference
  bias = math.sqrt(max(float(gap @ gap) - mean_trace - reference_trace, 0.0))
  norms = np.linalg.norm(estimates, axis=1) * float(np.linalg.norm(reference))
  cosines = estimates @ reference / np.maximum(norms, 1e-300)
  return {
      "bias": bias / ref_norm,
      "bias_se": math.sqrt(mean_trace + reference_trace) / ref_norm,
      "trace_cov": trace,
      "snr": signal / math.sqrt(max(trace, 1e-300)),
      "cosine": float(np.mean(cosines)),
      "cosine_se": float(np.std(cosines, ddof=1) / math.sqrt(draws)),
      "draws": draws,
  }


def stratified_mean(config, estimator: str, k: int, params, key, draws: int, group: int,
                    baseline: str = "none") -> tuple[np.ndarray, float]:
  """An estimate of `estimator`'s expectation `[P]` and its tr Cov.

  Each draw covers every context once (stratified: no context-sampling
  noise) with `group` rollouts each, so its mean is the estimator's
  expectation under uniform contexts; `baseline="leave_one_out"` (within
  each group) is allowed for V-PG, which it keeps unbiased.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  base = point_config(config, estimator, k)
  rows = base.env.num_contexts * group
  pipeline, env = build(config_lib.apply_overrides(base, {
      "baseline": baseline, "group_size": group, "batch_size": rows}))
  contexts = jnp.repeat(jnp.arange(env.num_contexts, dtype=jnp.int32), group)
  estimates = sample_estimates(pipeline, env, params, key, draws, chunk=2,
                               context_ids=contexts)
  return estimates.mean(axis=0), float(np.sum(estimates.var(axis=0, ddof=1))) / draws


def _reference(config, k: int, params, key, reference_draws: int):
  """(g*, its tr Cov, how it was obtained) at one K: exact by enumeration, or
  the stratified V-PG mean with REFERENCE_GROUP rollouts per context and a
  leave-one-out baseline (unbiased for grad V)."""
  pipeline, env = build(point_config(config, "vpg", k))
  if can_enumerate(pipeline.spec, env.num_items):
    return exact_moments(pipeline, env, params)["true"], 0.0, "exact (enumeration)"
  mean, trace = stratified_mean(config, "vpg", k, params, key, reference_draws,
                                REFERENCE_GROUP, "leave_one_out")
  return mean, trace, (f"V-PG, {reference_draws} x {env.num_contexts} contexts x "
                       f"{REFERENCE_GROUP}, leave-one-out")


def run_study(config, estimators: Sequence[str], ks: Sequence[int], draws: int,
              reference_draws: int, seed: int = 0, checkpoint: str | None = None,
              log=print, mean_draws: int = 0) -> list[dict[str, Any]]:
  """One row per (K, estimator): the measures of `summarise` plus the names.

  `mean_draws` > 0: the estimator's expectation (for bias and SNR) from that
  many stratified draws (`stratified_mean`, MEAN_GROUP rollouts per context)
  instead of the mean of the single-batch draws.
  """
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  params = None
  for k in ks:
    key = jax.random.fold_in(jax.random.key(seed), k)
    if params is None:
      params = init_params(build(point_config(config, estimators[0], k))[0], seed, checkpoint)
    reference, ref_trace, how = _reference(config, k, params, jax.random.fold_in(key, 0),
                                           reference_draws)
    for i, name in enumerate(estimators):
      pipeline, env = build(point_config(config, name, k))
      estimates = sample_estimates(pipeline, env, params, jax.random.fold_in(key, i + 1), draws)
      mean = mean_trace = None
      if mean_draws and how != "exact (enumeration)":
        mean, mean_trace = stratified_mean(config, name, k, params,
                                           jax.random.fold_in(key, 1000 + i), mean_draws,
                                           MEAN_GROUP)
      row = {"estimator": name, "K": k, "reference": how,
             **summarise(estimates, reference, ref_trace, mean, mean_trace)}
      log(f"K={k} {name}: bias {row['bias']:.3g} (se {row['bias_se']:.2g}), tr Cov "
          f"{row['trace_cov']:.3g}, SNR {row['snr']:.3g}, cos {row['cosine']:.3f}")
      rows.append(row)
  return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a Markdown table, one line per (K, estimator)."""
  lines = ["| K | estimator | relative bias (se) | tr Cov | SNR | mean cos(g, g*) | reference |",
           "|---:|---|---:|---:|---:|---:|---|"]
  for r in rows:
    lines.append(
        f"| {r['K']} | {runs_lib.estimator_name(r['estimator'])} | {r['bias']:.3g} "
        f"({r['bias_se']:.2g}) | {r['trace_cov']:.3g} | {r['snr']:.3g} | "
        f"{r['cosine']:.3f} | {r['reference']} |")
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """One panel per measure, K on a log x-axis, one line per estimator."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(dict.fromkeys(r["estimator"] for r in rows))
  colors = runs_lib.estimator_colors([{"config": {"estimator": n}} for n in names])
  fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6),
                           layout="constrained")
  for ax, measure in zip(axes, MEASURES):
    for name in names:
      mine = sorted((r for r in rows if r["estimator"] == name), key=lambda r: r["K"])
      # A zero (noise-corrected to 0) has no place on a log axis: left out.
      values = [r[measure] if measure == "cosine" or r[measure] > 0 else np.nan for r in mine]
      ax.plot([r["K"] for r in mine], values, "o-", color=colors[name],
              label=runs_lib.estimator_name(name))
    ax.set_xscale("log")
    if measure != "cosine":
      ax.set_yscale("log")
    ax.set_xlabel("K")
    ax.set_title(_TITLES[measure], fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=11)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _load_config(arg: str, overrides: Sequence[str]):
  """A config file `FILE[:ARG]` with `name=value` overrides (numbers parsed)."""
  from cpg_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(arg, StudyError)
  values = {}
  for item in overrides:
    name, _, text = item.partition("=")
    try:
      values[name] = json.loads(text)
    except json.JSONDecodeError:
      values[name] = text
  return config_lib.apply_overrides(config, values)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="config file FILE[:ARG]")
  parser.add_argument("--set", action="append", default=[],
                      help="config override name=value (repeatable), e.g. lsr=uniform")
  parser.add_argument("--estimators", default="vpg,ca_pg,ca_pg_exact,ca_pg_ss,ca_pg_swr")
  parser.add_argument("--K", default="5,10,20,50,100")
  parser.add_argument("--draws", type=int, default=200)
  parser.add_argument("--reference_draws", type=int, default=50,
                      help="stratified V-PG draws (each: every context x 4 rollouts)")
  parser.add_argument("--mean_draws", type=int, default=10,
                      help="stratified draws of each estimator's mean (every context x 2)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint", default=None, help="a run's workdir (same config)")
  parser.add_argument("--out", default="runs/gradients")
  args = parser.parse_args(argv)
  try:
    config = _load_config(args.config, args.set)
    ks = [int(k) for k in args.K.split(",")]
    estimators = [e for e in args.estimators.split(",") if e]
    if args.draws < 2 or args.reference_draws < 2:
      raise StudyError("--draws and --reference_draws must be >= 2")
    rows = run_study(config, estimators, ks, args.draws, args.reference_draws, args.seed,
                     args.checkpoint, mean_draws=args.mean_draws)
  except (user_errors.UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  table = markdown_table(rows)
  with open(os.path.join(args.out, "gradients.md"), "w") as f:
    f.write(table)
  with open(os.path.join(args.out, "gradients.json"), "w") as f:
    json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)
  title = (f"Gradient estimates at {'a checkpoint' if args.checkpoint else 'initialisation'}"
           f" ({config.lsr} LSR, N={config.env.num_items}, batch {config.batch_size}, "
           f"{args.draws} draws)")
  plot(rows, os.path.join(args.out, "gradients.png"), title)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
