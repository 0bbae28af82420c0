"""Policy evaluation and the reference values (docs/method.md, the protocol).

At step t every seed is evaluated on `eval_contexts` fresh contexts drawn from
`fold_in(fold_in(base_key, EVAL_STREAM), t)`: the ESR's deterministic top-K,
the LSR in evaluation mode, observed rewards. The result depends only on
(seed, step, parameters), never on how the run was split into invocations.

Reported per seed:
  policy_value    mean aggregated observed reward (the paper's measure)
  expected_value  the same with the noise-free mean reward E[r | x, a]
  recall          |ESR top-K  ∩  true top-K by q| / K

Reference values, once per run, noise-free, on every context when there are
at most `EXACT_REFERENCE_CONTEXTS` (the context distribution is uniform, so
this is exact up to a stochastic LSR), else on `eval_contexts` drawn with a
fixed key:
  optimal_value       optimal ESR (top-K by q) + optimal LSR (the paper's line)
  optimal_esr_value   optimal ESR + the configured LSR
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cpg_jax.environments.base import Environment
from cpg_jax.numerics.late_stage import LateStageRanker
from cpg_jax.training import interaction
from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training import streams
from cpg_jax.training.pipeline import Pipeline
from cpg_jax.training.state import TrainState

EXACT_REFERENCE_CONTEXTS = 100_000


def _batched_contexts(contexts: jax.Array, batch_size: int) -> jax.Array:
  """Pads `[n]` context ids to `[num_batches, batch_size]` (pads repeat id 0)."""
  n = contexts.shape[0]
  num_batches = -(-n // batch_size)
  padded = jnp.zeros((num_batches * batch_size,), contexts.dtype).at[:n].set(contexts)
  return padded.reshape(num_batches, batch_size)


def _valid_mask(n: int, batch_size: int) -> jax.Array:
  num_batches = -(-n // batch_size)
  return (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)


def evaluate_seed(pipeline: Pipeline, env: Environment, state: TrainState) -> dict:
  """Evaluation metrics of one seed at its current step (scalars)."""
  spec = pipeline.spec
  k = spec.num_candidates
  key = streams.stream_key(state.key, streams.EVAL_STREAM, state.step)
  key_contexts, key_rollouts = jax.random.split(key)
  n = spec.eval_contexts
  batch = min(spec.eval_batch_size, n)
  contexts = _batched_contexts(env.sample_contexts(key_contexts, n), batch)
  valid = _valid_mask(n, batch)
  keys = jax.random.split(key_rollouts, contexts.shape[0])

  def one_batch(args):
    context_ids, batch_key = args
    scores = pipeline.score_table(state.params, context_ids)
    rollout = interaction.collect_rollout(
        batch_key, env, context_ids, scores, k, pipeline.lsr,
        pipeline.position_weights(), deterministic=True)
    mean_reward = env.mean_reward(context_ids, rollout.outputs)
    expected = jnp.sum(mean_reward * rollout.position_weights, axis=-1)
    best = env.optimal_items(context_ids, k)
    hits = (rollout.candidates[:, :, None] == best[:, None, :]).any(-1).sum(-1)
    return rollout.aggregated_reward(), expected, hits / k

  observed, expected, recall = jax.lax.map(one_batch, (contexts, keys))
  mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / n
  return {"policy_value": mean(observed), "expected_value": mean(expected),
          "recall": mean(recall)}


def make_evaluate(pipeline: Pipeline, mesh: jax.sharding.Mesh | None = None):
  """A jitted `evaluate(states, env) -> dict of [seeds] arrays` (inside one
  `shard_map` over `mesh` when given, as the training chunk)."""
  per_seed = jax.vmap(lambda states, env: evaluate_seed(pipeline, env, states),
                      in_axes=(0, None))
  if mesh is None:
    return jax.jit(per_seed)

  def sharded(states, env):
    sharded = pipeline.item_shards is not None
    return jax.shard_map(per_seed, mesh=mesh,
                         in_specs=(mesh_lib.state_specs(states, sharded),
                                   mesh_lib.env_specs(env, sharded)),
                         out_specs=P(mesh_lib.SEED_AXIS))(states, env)
  return jax.jit(sharded)


def reference_values(pipeline: Pipeline, env: Environment, seed: int,
                     mesh: jax.sharding.Mesh | None = None) -> dict:
  """Noise-free values of the optimal ESR with the optimal and with the
  configured LSR (floats); inside `shard_map` over `mesh` when given."""
  spec = pipeline.spec
  k = spec.num_candidates
  if env.num_contexts <= EXACT_REFERENCE_CONTEXTS:
    contexts = jnp.arange(env.num_contexts, dtype=jnp.int32)
    n = env.num_contexts
  else:
    n = spec.eval_contexts
    contexts = env.sample_contexts(jax.random.key(seed), n)
  batch = min(spec.eval_batch_size, n)
  valid = _valid_mask(n, batch)
  contexts = _batched_contexts(contexts, batch)
  optimal_lsr = LateStageRanker("optimal", spec.num_outputs)
  weights = pipeline.position_weights()
  keys = jax.random.split(jax.random.key(seed), contexts.shape[0])

  def compute(env, contexts, keys):
    def one_batch(args):
      context_ids, batch_key = args
      best = env.optimal_items(context_ids, k)
      q = env.expected_score(context_ids, best)
      values = []
      for lsr in (optimal_lsr, pipeline.lsr):
        positions = lsr.select(batch_key, q, deterministic=True)
        outputs = jnp.take_along_axis(best, positions, axis=1)
        values.append(jnp.sum(env.mean_reward(context_ids, outputs) * weights, -1))
      return tuple(values)
    opt, esr = jax.lax.map(one_batch, (contexts, keys))
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / n
    return mean(opt), mean(esr)

  if mesh is not None:
    env_specs = mesh_lib.env_specs(env, pipeline.item_shards is not None)
    compute = jax.shard_map(compute, mesh=mesh, in_specs=(env_specs, P(), P()), out_specs=P())
  optimal, optimal_esr = jax.jit(compute)(env, contexts, keys)
  return {"optimal_value": float(optimal), "optimal_esr_value": float(optimal_esr)}
