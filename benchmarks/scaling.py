"""Training-step cost from 1,000 to 10,000,000 items, against its floor.

  python benchmarks/scaling.py [--items 1e3,1e4,1e5,1e6,1e7] [--candidates 10,100,1000]
      [--estimators vpg,vpg_swr,ca_pg,ca_pg_swr] [--batch 128] [--repeats 3]
      [--score_path auto] [--noise_generator hash]

For each (N, K, estimator): milliseconds per full training step (context
draw, scoring, candidate sampling, LSR, rewards, loss, gradient, Adagrad
update; a `lax.scan` of steps, compilation excluded), and in the same run the
step's floor: the score product plus the log-sum-exp over items plus the
top-K without noise, forward and backward, on the same score path (dense or
item-blocked). `ratio` = step / floor. `step peak MB` is XLA's buffer
assignment for the compiled step (arguments + outputs + temporaries, aliasing
removed; the arguments include the O(N d) parameter, optimiser and
environment tables), `step temp MB` the temporaries alone (what a
`[batch, items]` matrix would show up in); `path` says whether the step used
the dense `[batch, items]` path or item blocks.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.training import config as config_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import step as step_lib
from cpg_jax.training import state as state_lib


def _median_seconds(fn, repeats):
  jax.block_until_ready(fn())  # Warm-up (compilation is done by the caller).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _peak_bytes(compiled) -> tuple[float, float]:
  """(peak, temporaries) in bytes from XLA's buffer assignment."""
  stats = compiled.memory_analysis()
  if stats is None:
    return float("nan"), float("nan")
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return float(peak), float(stats.temp_size_in_bytes)


def make_floor(pipeline, num_candidates):
  """Score product + LSE + top-K (no noise), forward and backward."""

  def floor(params, context_ids):
    def lse_sum(p):
      return jnp.sum(pipeline.score_table(p, context_ids).logsumexp())
    value, grads = jax.value_and_grad(lse_sum)(params)
    top = pipeline.score_table(params, context_ids).top_k(0, num_candidates)
    return value, grads, top

  return jax.jit(floor)


def measure(config, steps_per_chunk, repeats):
  pipeline, env = pipeline_lib.from_config(config)
  states = state_lib.init_states(pipeline, [0])
  chunk = step_lib.make_train_chunk(pipeline)
  compiled_step = chunk.lower(states, env, steps_per_chunk).compile()
  step_seconds = _median_seconds(lambda: compiled_step(states, env), repeats) / steps_per_chunk

  params = jax.tree.map(lambda x: x[0], states.params)
  context_ids = env.sample_contexts(jax.random.key(0), config.batch_size)
  floor = make_floor(pipeline, config.num_candidates).lower(params, context_ids).compile()
  floor_seconds = _median_seconds(lambda: floor(params, context_ids), repeats)
  dense = not pipeline.uses_blocked_scores(config.batch_size)
  return step_seconds, floor_seconds, _peak_bytes(compiled_step), dense


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", default="1e3,1e4,1e5,1e6")
  parser.add_argument("--candidates", default="10,100,1000")
  parser.add_argument("--estimators", default="vpg,vpg_swr,ca_pg,ca_pg_swr")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--score_path", default="auto")
  parser.add_argument("--item_block_size", type=int, default=65536)
  parser.add_argument("--dense_budget_mb", type=float, default=1024)
  parser.add_argument("--noise_generator", default="hash")
  args = parser.parse_args()

  print(f"# scaling: jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{platform.machine()}; batch {args.batch}, score_path {args.score_path}, "
        f"block {args.item_block_size}, dense budget {args.dense_budget_mb} MB, "
        f"noise {args.noise_generator}, median of {args.repeats}")
  print("| N | K | estimator | path | step ms | floor ms | ratio | step peak MB | step temp MB |")
  print("|---:|---:|---|---|---:|---:|---:|---:|---:|")
  for items in (int(float(n)) for n in args.items.split(",")):
    for k in (int(c) for c in args.candidates.split(",")):
      if k > items:
        continue
      for name in args.estimators.split(","):
        c = config_lib.default_config()
        c.estimator = name
        c.env.num_items = items
        c.num_candidates = k
        c.batch_size = args.batch
        c.num_seeds = 1
        c.score_path = args.score_path
        c.item_block_size = args.item_block_size
        c.dense_budget_mb = args.dense_budget_mb
        c.noise_generator = args.noise_generator
        steps_per_chunk = max(1, min(50, int(2e6 // (items * args.batch // 128))))
        step, floor, (peak, temp), dense = measure(c, steps_per_chunk, args.repeats)
        print(f"| {items:,} | {k} | {name} | {'dense' if dense else 'blocked'} | "
              f"{step * 1e3:.2f} | {floor * 1e3:.2f} | {step / floor:.2f} | "
              f"{peak / 2**20:,.0f} | {temp / 2**20:,.0f} |", flush=True)


if __name__ == "__main__":
  main()
