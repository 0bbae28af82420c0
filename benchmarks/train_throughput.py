"""Gradient steps per second of the training loop, per estimator.

  python benchmarks/train_throughput.py [--items 1000] [--candidates 10]
      [--outputs 1] [--chunk 500] [--repeats 3] [--seeds 1,10]

The paper's default setting (synthetic environment, batch 128, 1,000 items,
K = 10, L = 1, Adagrad): for each estimator and seed count, one compiled chunk
of `--chunk` steps (a `lax.scan` over the vmapped seeds) is run once to
compile, then `--repeats` times timed. Prints steps/s (all seeds advance one
step per step), seed-steps/s, and seconds per 1,000 steps per seed, which is
the number to hold against the published PyTorch code (about 100 s per 1,000
steps on this machine).
"""

import argparse
import platform
import time

import jax
import numpy as np

from cpg_jax.training import config as config_lib
from cpg_jax.numerics import estimators
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import step as step_lib
from cpg_jax.training import state as state_lib


def measure(config, seeds: int, chunk_steps: int, repeats: int) -> float:
  """Median seconds per chunk, compilation excluded."""
  pipeline, env = pipeline_lib.from_config(config)
  chunk = step_lib.make_train_chunk(pipeline)
  states = state_lib.init_states(pipeline, range(seeds))
  states, _ = chunk(states, env, chunk_steps)  # Compile + warm up.
  jax.block_until_ready(states)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    states, _ = chunk(states, env, chunk_steps)
    jax.block_until_ready(states)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", type=int, default=1000)
  parser.add_argument("--candidates", type=int, default=10)
  parser.add_argument("--outputs", type=int, default=1)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--chunk", type=int, default=500)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seeds", default="1,10")
  parser.add_argument("--estimators", default=",".join(estimators.ESTIMATORS))
  args = parser.parse_args()

  print(f"# train_throughput: jax {jax.__version__}, device {jax.devices()[0].device_kind}, "
        f"{platform.processor() or platform.machine()}")
  print(f"# batch {args.batch}, N={args.items}, K={args.candidates}, L={args.outputs}, "
        f"chunk {args.chunk} steps, median of {args.repeats}")
  print("| estimator | seeds | steps/s | seed-steps/s | s per 1,000 steps per seed |")
  print("|---|---:|---:|---:|---:|")
  for name in args.estimators.split(","):
    for seeds in (int(s) for s in args.seeds.split(",")):
      c = config_lib.default_config()
      c.estimator = name
      c.env.num_items = args.items
      c.num_candidates = args.candidates
      c.num_outputs = args.outputs
      c.batch_size = args.batch
      c.num_seeds = seeds
      seconds = measure(c, seeds, args.chunk, args.repeats)
      steps_per_sec = args.chunk / seconds
      per_seed = seconds / args.chunk * 1000 / seeds
      print(f"| {name} | {seeds} | {steps_per_sec:,.0f} | {steps_per_sec * seeds:,.0f} | "
            f"{per_seed:.3f} |", flush=True)


if __name__ == "__main__":
  main()
