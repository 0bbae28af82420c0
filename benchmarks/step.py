"""Time one full training step per estimator.

One jitted function does everything a training step does: draw contexts,
score every item with the two-tower model, Gumbel-top-k sampling, the
late-stage ranker, rewards, the estimator's surrogate loss, its gradient and an
Optax Adagrad update. The script checks that each step function compiled
exactly once and that the timed loop makes no host transfer
(`jax.transfer_guard("disallow")`), then prints

  estimator | noise | median ms/step | min ms | steps/s

over `--repeats` timed steps after warm-up (each timed with
`block_until_ready`).

  python benchmarks/step.py --batch 128 --items 1000 --candidates 10 \
      --outputs 1 --repeats 50
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time

import jax
import numpy as np

from cpg_jax.training import config as config_lib
from cpg_jax.numerics import estimators
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import step as step_lib
from cpg_jax.training import state as state_lib


def make_pipeline(args, estimator: str, noise_generator: str):
  """The library's pipeline for these settings (synthetic environment)."""
  c = config_lib.default_config()
  c.estimator = estimator
  c.env.num_contexts = args.contexts
  c.env.num_items = args.items
  c.num_candidates = args.candidates
  c.num_outputs = args.outputs
  c.num_models = args.models
  c.lsr = args.lsr
  c.learning_rate = args.lr
  c.batch_size = args.batch
  c.num_seeds = 1
  c.noise_generator = noise_generator
  return pipeline_lib.from_config(c)


def time_estimator(estimator, noise_generator, args, trace_counts):
  """Compiles, warms up and times one estimator's step. Returns per-step ms."""
  pipeline, env = make_pipeline(args, estimator, noise_generator)
  estimator = f"{estimator}/{noise_generator}"

  def step(state, env):
    trace_counts[estimator] += 1  # Python side effect: runs once per trace.
    return step_lib.train_step(pipeline, env, state)

  step = jax.jit(step, donate_argnums=0)
  state = jax.device_put(state_lib.init_state(pipeline, args.seed))
  for _ in range(args.warmup):
    state, metrics = step(state, env)
  jax.block_until_ready((state, metrics))
  times = []
  with jax.transfer_guard("disallow"):
    for _ in range(args.repeats):
      start = time.perf_counter()
      state, metrics = step(state, env)
      jax.block_until_ready((state, metrics))
      times.append(1e3 * (time.perf_counter() - start))
  if not np.isfinite(float(metrics["loss"])):
    raise RuntimeError(f"{estimator}: non-finite loss {float(metrics['loss'])}")
  if trace_counts[estimator] != 1:
    raise RuntimeError(f"{estimator}: traced {trace_counts[estimator]} times, expected 1")
  cache_size = getattr(step, "_cache_size", lambda: 1)()
  if cache_size != 1:
    raise RuntimeError(f"{estimator}: {cache_size} compiled versions, expected 1")
  return times


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128, help="contexts per step")
  parser.add_argument("--items", type=int, default=1000, help="catalogue size N")
  parser.add_argument("--contexts", type=int, default=1000, help="number of contexts")
  parser.add_argument("--candidates", type=int, default=10, help="K")
  parser.add_argument("--outputs", type=int, default=1, help="L")
  parser.add_argument("--models", type=int, default=1, help="M")
  parser.add_argument("--lsr", default="optimal", help="late-stage ranker")
  parser.add_argument("--lr", type=float, default=0.01, help="Adagrad learning rate")
  parser.add_argument("--repeats", type=int, default=50, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compile")
  parser.add_argument("--estimators", default=",".join(estimators.ESTIMATORS),
                      help="comma-separated estimator names")
  parser.add_argument("--noise_generators", default="hash,threefry",
                      help="Gumbel noise generators to time (hash: the default; "
                      "threefry: jax.random.gumbel, the foundation's sampler)")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if not 1 <= args.outputs <= args.candidates <= args.items:
    raise SystemExit("need 1 <= outputs (L) <= candidates (K) <= items (N)")
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} | backend {jax.default_backend()} | device "
        f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s))")
  print(f"batch={args.batch} items(N)={args.items} contexts={args.contexts} "
        f"candidates(K)={args.candidates} outputs(L)={args.outputs} models(M)={args.models} "
        f"lsr={args.lsr} optimizer=adagrad(lr={args.lr}) repeats={args.repeats} "
        f"warmup={args.warmup}")
  print("environment: cpg_jax synthetic (docs/method.md §5.1); one jitted step = "
        "cpg_jax.step_lib.train_step: context draw + two-tower scoring + Gumbel-top-k + "
        "LSR + rewards + loss + grad + Adagrad update + divergence check")
  print("checks: compiled exactly once per estimator; timed loop under "
        "jax.transfer_guard('disallow')\n")
  trace_counts = collections.Counter()
  header = (f"{'estimator':<12} | {'noise':<8} | {'median ms/step':>14} | {'min ms':>8} | "
            f"{'steps/s':>9}")
  print(header)
  print("-" * len(header))
  for name in args.estimators.split(","):
    for generator in args.noise_generators.split(","):
      times = time_estimator(name, generator, args, trace_counts)
      median = statistics.median(times)
      print(f"{name:<12} | {generator:<8} | {median:14.3f} | {min(times):8.3f} | "
            f"{1e3 / median:9.1f}")
      sys.stdout.flush()
  print(f"\ntraces per estimator: {dict(trace_counts)}")


if __name__ == "__main__":
  main()
