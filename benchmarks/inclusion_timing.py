"""Forward + backward time of the inclusion probabilities of `cpg_jax.inclusion`.

For a batch of dense float32 scores `[batch, N]` and L rewarded items per
context, times jit(value_and_grad(sum of log P)) for the paper's closed form
(`ca_pg`), CA-PG-SwR's log-softmax (`ca_pg_swr`), successive sampling and
`exact_inclusion_log_prob` (defaults and cheaper node counts), and prints a
Markdown table of the median over `--repeats` timed calls after one warm-up
call (compilation time in its own column). Only the probability and its
gradient are timed, not a training step.

  python benchmarks/inclusion_timing.py --batch 128 --cases 1000:20,1000:100,100000:100
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics import inclusion
from cpg_jax.numerics import successive_sampling
from cpg_jax.numerics import plackett_luce
from cpg_jax.numerics.scores import DenseScores


def candidates(num_items, k, items):
  return [
      ("ca_pg (closed form)", lambda s: plackett_luce.ca_inclusion_log_prob(DenseScores(s[None]), items, k)),
      ("ca_pg_swr (log-softmax)", lambda s: plackett_luce.top1_log_prob(DenseScores(s[None]), items, k)),
      ("successive sampling", lambda s: successive_sampling.successive_sampling_log_prob(s, items, k)),
      ("exact, defaults (32 nodes)", lambda s: inclusion.exact_inclusion_log_prob(s, items, k)),
      ("exact, 24 nodes (order 12)", lambda s: inclusion.exact_inclusion_log_prob(
          s, items, k, num_nodes=24, order=12)),
      ("exact, 16 nodes", lambda s: inclusion.exact_inclusion_log_prob(
          s, items, k, num_nodes=16)),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--outputs", type=int, default=1, help="L, rewarded items per context")
  parser.add_argument("--cases", default="1000:20,1000:100,100000:100", help="N:K,...")
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  print(f"batch {args.batch}, L = {args.outputs}, float32, {jax.devices()[0].platform}\n")
  print("| N | K | function | fwd+bwd ms (median) | min ms | compile s |")
  print("|---:|---:|---|---:|---:|---:|")
  for case in args.cases.split(","):
    num_items, k = (int(float(v)) for v in case.split(":"))
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(args.batch, num_items)), jnp.float32)
    items = jnp.asarray(rng.integers(0, num_items, (args.batch, args.outputs)), jnp.int32)
    for name, fn in candidates(num_items, k, items):
      step = jax.jit(jax.value_and_grad(lambda s, fn=fn: jnp.sum(fn(s))))
      started = time.perf_counter()
      jax.block_until_ready(step(scores))
      compile_s = time.perf_counter() - started
      times = []
      for _ in range(args.repeats):
        started = time.perf_counter()
        jax.block_until_ready(step(scores))
        times.append(1e3 * (time.perf_counter() - started))
      print(f"| {num_items:,} | {k} | {name} | {np.median(times):.1f} | {min(times):.1f} | "
            f"{compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
