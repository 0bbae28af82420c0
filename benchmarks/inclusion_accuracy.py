"""Accuracy of the Plackett-Luce inclusion probabilities of `cpg_jax.numerics.inclusion`.

At N = 1,000 items, K = 10 and 100, for flat (N(0, 1)) and peaked
(N(0, 3^2)) scores of one context each, prints a Markdown table of the
largest and the median relative error of P(a in C) over all items, and the
sum over items (K for exact inclusion probabilities), for:

  * `exact_inclusion_log_prob` with every item counted exactly
    (tail="exact") at 16, 32, 64 nodes: the quadrature error;
  * the defaults, and variations of the head size, the tail model
    (series / normal / edgeworth / poisson), the number of odds power sums
    and the nodes; the defaults in float32;
  * the paper's closed form (`plackett_luce.ca_inclusion_log_prob`, method.md §4.3);
  * successive sampling (`successive_sampling_log_prob`);

all against a reference: tail="exact" with 128 nodes in float64, itself
checked against Monte-Carlo inclusion frequencies (the largest |z| over items
of `--draws` Gumbel-top-K draws, and the count of items beyond 4 standard
errors).

With `--checkpoint WORKDIR` (a training run's workdir) the scores are
instead those a trained policy gives: seed 0 at the run's newest checkpoint,
the first `--contexts` contexts, at the run's K. One table, each error the
largest over those contexts (no Monte-Carlo check).

  python benchmarks/inclusion_accuracy.py [--draws 100000]
  python benchmarks/inclusion_accuracy.py --checkpoint WORKDIR [--contexts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cpg_jax.numerics import inclusion  # noqa: E402
from cpg_jax.numerics import successive_sampling  # noqa: E402
from cpg_jax.numerics import plackett_luce  # noqa: E402
from cpg_jax.numerics.scores import DenseScores  # noqa: E402
from cpg_jax.experiments import gradients  # noqa: E402
from cpg_jax.training import config as config_lib  # noqa: E402

NUM_ITEMS = 1000


def monte_carlo(seed, scores, num_candidates, num_draws, chunk=10_000):
  """Inclusion frequencies `[N]` of Gumbel-top-K draws for one context."""
  scores = jnp.asarray(scores, jnp.float32)

  @jax.jit
  def counts(key):
    noise = jax.random.gumbel(key, (chunk, scores.shape[0]), jnp.float32)
    top = jax.lax.top_k(scores[None] + noise, num_candidates)[1]
    return jnp.zeros(scores.shape[0], jnp.int32).at[top.ravel()].add(1)

  keys = jax.random.split(jax.random.key(seed), max(1, num_draws // chunk))
  return sum(np.asarray(counts(key)) for key in keys) / (chunk * len(keys))


def settings(k, shape=(2, NUM_ITEMS)):
  """(label, function of dense scores `shape` = `[B, N]` -> log P `[B, N]`)."""
  items = jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
  exact = lambda **kw: (lambda s: inclusion.exact_inclusion_log_prob_all(s, k, **kw))
  default_head = inclusion.default_head_size(shape[1], k)
  rows = [(f"exact count, {n} nodes", exact(tail="exact", num_nodes=n)) for n in (16, 32, 64)]
  rows += [
      (f"**defaults** (32 nodes, head {default_head}, series R=12, M=32)", exact()),
      ("defaults, float32", ("float32", {})),
      ("defaults, 24 nodes (order 12)", exact(num_nodes=24, order=12)),
      ("defaults, 16 nodes", exact(num_nodes=16)),
      ("defaults, 16 nodes, float32", ("float32", {"num_nodes": 16})),
      (f"head {k} (= K)", exact(head_size=k)),
      (f"head {k // 2} (= K/2)", exact(head_size=k // 2)),
      ("series R=8", exact(series_terms=8)),
      ("tail normal", exact(tail="normal")),
      ("tail edgeworth", exact(tail="edgeworth")),
      ("tail poisson", exact(tail="poisson")),
      ("closed form (paper, §4.3)",
       lambda s: plackett_luce.ca_inclusion_log_prob(DenseScores(s[None]), items, k)),
      ("successive sampling",
       lambda s: successive_sampling.successive_sampling_log_prob(s, items, k)),
  ]
  return rows


def reference_log_probs(scores, k):
  """The reference: every item counted exactly, 128 nodes, float64 `[B, N]`."""
  return np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(
      s, k, tail="exact", num_nodes=128))(jnp.asarray(scores)))


def setting_values(fn, scores, k):
  """log P `[B, N]` (float64) of one setting of `settings(k)`: a function of
  the float64 scores, or ("float32", options of the defaults) run in float32."""
  if isinstance(fn, tuple):
    options = fn[1]
    return np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(s, k, **options))(
        jnp.asarray(scores, jnp.float32)), np.float64)
  return np.asarray(jax.jit(fn)(jnp.asarray(scores)))


def trained_scores(workdir, num_contexts):
  """(scores `[num_contexts, N]`, K) of seed 0 at a run's newest checkpoint.

  The scores are float32 values (what training computes) held in float64.
  """
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  config = config_lib.apply_overrides(config_lib.default_config(),
                                      config_lib.flatten_config(record))
  config = gradients.point_config(config, config.estimator, config.num_candidates)
  # The checkpoint holds float32 arrays, and its digest is of those.
  with jax.enable_x64(False):
    pipeline, _ = gradients.build(config)
    params = gradients.init_params(pipeline, 0, workdir)
    scores = pipeline.model.apply({"params": params},
                                  jnp.arange(num_contexts, dtype=jnp.int32))[0]
  return np.asarray(scores, np.float32).astype(np.float64), int(config.num_candidates)


def checkpoint_table(workdir, num_contexts):
  """Prints the errors of every setting at a trained policy's scores."""
  scores, k = trained_scores(workdir, num_contexts)
  ordered = np.sort(scores, axis=1)
  top_gap = ordered[:, -1] - ordered[:, -k]  # [contexts]
  print(f"\n### Trained scores: {workdir}, seed 0, contexts 0..{num_contexts - 1}, "
        f"N = {scores.shape[1]:,}, K = {k}\n")
  print(f"Scores: std over items {scores.std(1).min():.2f}..{scores.std(1).max():.2f}, "
        f"top score minus K-th {top_gap.min():.2f}..{top_gap.max():.2f}.")
  reference = reference_log_probs(scores, k)
  print(f"Reference: largest |sum - K| {np.abs(np.exp(reference).sum(1) - k).max():.1e}.")
  print("\n| setting | max rel err | median | largest abs(sum - K) |")
  print("|---|---:|---:|---:|")
  for label, fn in settings(k, scores.shape):
    if label.startswith("exact count"):
      continue  # Every item in the head: the reference's method, at fewer nodes.
    value = setting_values(fn, scores, k)
    err = np.abs(np.expm1(value - reference))
    print(f"| {label} | {err.max():.1e} | {np.median(err):.1e} | "
          f"{np.abs(np.exp(value).sum(1) - k).max():.1e} |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--draws", type=int, default=100_000)
  parser.add_argument("--checkpoint", default=None, help="a training run's workdir")
  parser.add_argument("--contexts", type=int, default=8)
  args = parser.parse_args()
  if args.checkpoint:
    started = time.time()
    checkpoint_table(args.checkpoint, args.contexts)
    print(f"\n({time.time() - started:.0f} s)")
    return
  rng = np.random.default_rng(0)
  scores = np.stack([rng.normal(size=NUM_ITEMS), 3.0 * rng.normal(size=NUM_ITEMS)])
  scores = scores.astype(np.float32).astype(np.float64)  # float32-representable
  started = time.time()
  for k in (10, 100):
    reference = reference_log_probs(scores, k)
    ref_probs = np.exp(reference)
    print(f"\n### N = {NUM_ITEMS:,}, K = {k}\n")
    for kind, row, probs in zip(("flat", "peaked"), scores, ref_probs):
      mc = monte_carlo(k, row, k, args.draws)
      stderr = np.sqrt(probs * (1 - probs) / args.draws)
      z = np.abs(mc - probs) / np.maximum(stderr, 1e-12)
      print(f"Reference ({kind}): sum {probs.sum():.10f}; against {args.draws:,} Monte-Carlo "
            f"draws max |z| = {z.max():.2f}, items beyond 4 SE: {int(np.sum(z > 4))}.")
    print("\n| setting | flat: max rel err | median | sum | peaked: max rel err | median | sum |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, fn in settings(k):
      value = setting_values(fn, scores, k)
      err = np.abs(np.expm1(value - reference))  # |P / P_ref - 1|
      cells = []
      for b in range(2):
        cells += [f"{err[b].max():.1e}", f"{np.median(err[b]):.1e}",
                  f"{np.exp(value[b]).sum():.6f}"]
      print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
  print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
  main()
