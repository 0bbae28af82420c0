"""Time one full training step per estimator.

One jitted function does everything a training step does: draw contexts,
score every item with the two-tower model, Gumbel-top-k sampling, the
late-stage ranker, rewards, the estimator's surrogate loss, its gradient and an
Optax Adagrad update. The script checks that each step function compiled
exactly once and that the timed loop makes no host transfer
(`jax.transfer_guard("disallow")`), then prints

  estimator | median ms/step | min ms | steps/s

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

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cpg_jax import estimators
from cpg_jax import model as model_lib
from cpg_jax import rollout as rollout_lib
from cpg_jax.environments.base import Environment
from cpg_jax.late_stage import LateStageRanker


@flax.struct.dataclass
class _DenseEnvironment(Environment):
  """Fallback environment: a random dense q, rewards q + noise (>= 0)."""

  q: jax.Array  # [contexts, items]
  num_contexts: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)

  def sample_contexts(self, key, batch_size):
    return jax.random.randint(key, (batch_size,), 0, self.num_contexts, jnp.int32)

  def expected_score(self, context_ids, item_ids):
    return self.q[context_ids[:, None], item_ids]

  def mean_reward(self, context_ids, item_ids):
    return self.expected_score(context_ids, item_ids)

  def sample_reward(self, key, context_ids, item_ids):
    mean = self.mean_reward(context_ids, item_ids)
    return jnp.maximum(mean + 0.1 * jax.random.normal(key, mean.shape, mean.dtype), 0.0)

  def optimal_items(self, context_ids, k):
    return jax.lax.top_k(self.q[context_ids], k)[1].astype(jnp.int32)


def make_environment(num_contexts: int, num_items: int):
  """The library's synthetic environment if present, else a local dense one."""
  try:
    from cpg_jax.environments import make_synthetic_environment  # pylint: disable=g-import-not-at-top
  except ImportError:
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.uniform(0.0, 10.0, (num_contexts, num_items)), jnp.float32)
    return _DenseEnvironment(q=q, num_contexts=num_contexts, num_items=num_items), "local dense q"
  env = make_synthetic_environment(seed=0, num_contexts=num_contexts, num_items=num_items)
  return env, "cpg_jax synthetic (method.md §5.1)"


def build_step(estimator: str, model, lsr, num_candidates: int, batch: int,
               weights: jax.Array, optimizer, trace_counts: collections.Counter):
  """The jitted training step `(state, env) -> (state, loss)` for one estimator."""
  loss_fn = estimators.get_estimator(estimator)

  def step(state, env):
    trace_counts[estimator] += 1  # Python side effect: runs once per trace.
    params, opt_state, key = state
    key, key_contexts, key_rollout = jax.random.split(key, 3)
    context_ids = env.sample_contexts(key_contexts, batch)

    def objective(p):
      scores = model.apply({"params": p}, context_ids)  # [M, batch, items]
      roll = rollout_lib.collect_rollout(key_rollout, env, context_ids, scores,
                                         num_candidates, lsr, weights)
      return loss_fn(scores, roll)

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, key), loss

  return jax.jit(step, donate_argnums=0)


def time_estimator(estimator, args, model, env, lsr, weights, trace_counts):
  """Compiles, warms up and times one estimator's step. Returns per-step ms."""
  optimizer = optax.adagrad(args.lr, initial_accumulator_value=0.0, eps=1e-10)
  step = build_step(estimator, model, lsr, args.candidates, args.batch, weights,
                    optimizer, trace_counts)
  params = model_lib.init_params(model, jax.random.key(args.seed))
  state = (params, optimizer.init(params), jax.random.key(args.seed + 1))
  state = jax.device_put(state)
  for _ in range(args.warmup):
    state, loss = step(state, env)
  jax.block_until_ready((state, loss))
  times = []
  with jax.transfer_guard("disallow"):
    for _ in range(args.repeats):
      start = time.perf_counter()
      state, loss = step(state, env)
      jax.block_until_ready((state, loss))
      times.append(1e3 * (time.perf_counter() - start))
  if not np.isfinite(float(loss)):
    raise RuntimeError(f"{estimator}: non-finite loss {float(loss)}")
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
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if not 1 <= args.outputs <= args.candidates <= args.items:
    raise SystemExit("need 1 <= outputs (L) <= candidates (K) <= items (N)")
  env, env_name = make_environment(args.contexts, args.items)
  model = model_lib.TwoTowerScorer(num_contexts=args.contexts, num_items=args.items,
                                   num_models=args.models)
  lsr = LateStageRanker(args.lsr, args.outputs)
  weights = jnp.asarray(rollout_lib.position_weights(args.outputs))
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} | backend {jax.default_backend()} | device "
        f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s))")
  print(f"batch={args.batch} items(N)={args.items} contexts={args.contexts} "
        f"candidates(K)={args.candidates} outputs(L)={args.outputs} models(M)={args.models} "
        f"lsr={args.lsr} optimizer=adagrad(lr={args.lr}) repeats={args.repeats} "
        f"warmup={args.warmup}")
  print(f"environment: {env_name}; one jitted step = context draw + two-tower scoring + "
        "Gumbel-top-k + LSR + rewards + loss + grad + Adagrad update")
  print("checks: compiled exactly once per estimator; timed loop under "
        "jax.transfer_guard('disallow')\n")
  trace_counts = collections.Counter()
  header = f"{'estimator':<12} | {'median ms/step':>14} | {'min ms':>8} | {'steps/s':>9}"
  print(header)
  print("-" * len(header))
  for name in args.estimators.split(","):
    times = time_estimator(name, args, model, env, lsr, weights, trace_counts)
    median = statistics.median(times)
    print(f"{name:<12} | {median:14.3f} | {min(times):8.3f} | {1e3 / median:9.1f}")
    sys.stdout.flush()
  print(f"\ntraces per estimator: {dict(trace_counts)}")


if __name__ == "__main__":
  main()
