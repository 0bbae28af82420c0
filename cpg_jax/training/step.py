"""The pure functional training step and the chunk of steps.

`make_train_chunk` returns a jitted function that runs `n` steps as one
`lax.scan` for every seed at once (the seed axis is vmapped), so Python only
runs between chunks. Step t of a seed draws its randomness from the training
stream at t (`training.streams`).

Divergence: a seed whose loss or gradient is non-finite at step t keeps its
previous parameters and optimiser state from then on (frozen), and records t.
The other seeds are unaffected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from cpg_jax.environments.base import Environment
from cpg_jax.training import interaction
from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training import streams
from cpg_jax.training.pipeline import Pipeline
from cpg_jax.training.state import TrainState


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def sample_context_groups(env: Environment, key: jax.Array, batch_size: int,
                          group_size: int) -> jax.Array:
  """int32 `[batch_size]` context ids: batch_size / group_size contexts, each
  repeated on group_size consecutive rows (one draw per row at group_size 1)."""
  if group_size == 1:
    return env.sample_contexts(key, batch_size)
  return jnp.repeat(env.sample_contexts(key, batch_size // group_size), group_size)


def loss_and_gradient(pipeline: Pipeline, env: Environment, params, key: jax.Array,
                      context_ids: jax.Array | None = None):
  """One batch's surrogate loss, its rollout and the loss's gradient (a pytree
  like `params`): -grads is one single-batch policy-gradient estimate.

  Draws `batch_size` rollouts (in groups of `group_size` per context; or of
  the given `context_ids` `[batch_size]`, e.g. the gradient study's
  stratified reference), scores all items once, inside `value_and_grad`;
  sampling reads them under `stop_gradient`.
  """
  spec = pipeline.spec
  key_contexts, key_rollout = jax.random.split(key)
  if context_ids is None:
    context_ids = sample_context_groups(env, key_contexts, spec.batch_size, spec.group_size)

  def loss_and_rollout(params):
    scores = pipeline.score_table(params, context_ids)
    rollout = interaction.collect_rollout(
        key_rollout, env, context_ids, scores, spec.num_candidates,
        pipeline.lsr, pipeline.position_weights())
    return pipeline.loss_fn(scores, rollout), rollout

  (loss, rollout), grads = jax.value_and_grad(loss_and_rollout, has_aux=True)(params)
  return loss, rollout, grads


def train_step(
    pipeline: Pipeline, env: Environment, state: TrainState
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One on-policy gradient step for one seed (docs/method.md §6).

  Draw `batch_size` contexts, score all items, sample candidates, let the LSR
  choose, observe rewards, and apply one optimiser step on the estimator's
  surrogate loss. Scores are computed once, inside `value_and_grad`; sampling
  reads them under `stop_gradient`.

  Returns the new state and per-step metrics: `loss`, `reward` (mean
  aggregated observed reward of the batch), `finite`.
  """
  key = streams.stream_key(state.key, streams.TRAIN_STREAM, state.step)
  loss, rollout, grads = loss_and_gradient(pipeline, env, state.params, key)
  updates, new_opt_state = pipeline.optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
  if pipeline.item_shards is not None:  # Every shard must agree to apply the step.
    finite = pipeline.item_shards.all_true(finite)
  newly_diverged = ~finite & ~state.diverged
  apply = finite & ~state.diverged
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  new_state = TrainState(
      params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state),
      step=state.step + 1,
      key_data=state.key_data,
      diverged=state.diverged | ~finite,
      diverged_step=jnp.where(newly_diverged, state.step, state.diverged_step),
  )
  metrics = {
      "loss": loss,
      "reward": jnp.mean(rollout.aggregated_reward()),
      "finite": finite,
  }
  return new_state, metrics


def make_train_chunk(pipeline: Pipeline, step_fn=train_step,
                     mesh: jax.sharding.Mesh | None = None):
  """A jitted `chunk(states, env, num_steps) -> (states, metrics)`.

  `states` carry a leading `[seeds]` axis; `num_steps` is static (one
  compilation per distinct chunk length). Metrics are `[num_steps, seeds]`.
  `step_fn` can be replaced (tests inject failures through it). With a
  `mesh`, the chunk runs inside one `shard_map` over it: each device steps
  its own seeds (vmapped) on its own rows of the catalogue (the states and
  the environment must be padded and placed by `training.mesh`).
  """

  def local_chunk(states, env, num_steps):
    def body(carry, _):
      return jax.vmap(lambda s: step_fn(pipeline, env, s))(carry)
    return jax.lax.scan(body, states, None, length=num_steps)

  def chunk(states, env, num_steps):
    if mesh is None:
      return local_chunk(states, env, num_steps)
    sharded = pipeline.item_shards is not None
    specs = mesh_lib.state_specs(states, sharded)
    return jax.shard_map(
        lambda s, e: local_chunk(s, e, num_steps), mesh=mesh,
        in_specs=(specs, mesh_lib.env_specs(env, sharded)),
        out_specs=(specs, P(None, mesh_lib.SEED_AXIS)))(states, env)

  # No buffer donation: an asynchronous checkpoint may still be reading the
  # previous states while the next chunk runs.
  return jax.jit(chunk, static_argnums=2)
