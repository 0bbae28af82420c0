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

  python benchmarks/inclusion_accuracy.py [--draws 100000]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cpg_jax.numerics import inclusion  # noqa: E402
from cpg_jax.numerics import successive_sampling  # noqa: E402
from cpg_jax.numerics import plackett_luce  # noqa: E402
from cpg_jax.numerics.scores import DenseScores  # noqa: E402

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


def settings(k):
  """(label, function of dense scores `[2, N]` -> log P `[2, N]`)."""
  items = jnp.broadcast_to(jnp.arange(NUM_ITEMS, dtype=jnp.int32), (2, NUM_ITEMS))
  exact = lambda **kw: (lambda s: inclusion.exact_inclusion_log_prob_all(s, k, **kw))
  default_head = inclusion.default_head_size(NUM_ITEMS, k)
  rows = [(f"exact count, {n} nodes", exact(tail="exact", num_nodes=n)) for n in (16, 32, 64)]
  rows += [
      (f"**defaults** (32 nodes, head {default_head}, series R=12, M=32)", exact()),
      ("defaults, float32", "float32"),
      ("defaults, 24 nodes (order 12)", exact(num_nodes=24, order=12)),
      ("defaults, 16 nodes", exact(num_nodes=16)),
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--draws", type=int, default=100_000)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  scores = np.stack([rng.normal(size=NUM_ITEMS), 3.0 * rng.normal(size=NUM_ITEMS)])
  scores = scores.astype(np.float32).astype(np.float64)  # float32-representable
  started = time.time()
  for k in (10, 100):
    reference = np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(
        s, k, tail="exact", num_nodes=128))(jnp.asarray(scores)))
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
      if fn == "float32":
        value = np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(s, k))(
            jnp.asarray(scores, jnp.float32)), np.float64)
      else:
        value = np.asarray(jax.jit(fn)(jnp.asarray(scores)))
      err = np.abs(np.expm1(value - reference))  # |P / P_ref - 1|
      cells = []
      for b in range(2):
        cells += [f"{err[b].max():.1e}", f"{np.median(err[b]):.1e}",
                  f"{np.exp(value[b]).sum():.6f}"]
      print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
  print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
  main()
