"""The pure functional training step, chunk and seed batching.

State is one explicit pytree, `TrainState`. `make_train_chunk` returns a
jitted function that runs `n` steps as one `lax.scan` for every seed at once
(the seed axis is vmapped), so Python only runs between chunks.

Randomness: each seed has a fixed base key; step t draws from
`fold_in(fold_in(base, TRAIN_STREAM), t)`. Nothing random is carried from step
to step, so a run split into any number of chunks or invocations sees exactly
the same randomness.

Divergence: a seed whose loss or gradient is non-finite at step t keeps its
previous parameters and optimiser state from then on (frozen), and records t.
The other seeds are unaffected.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cpg_jax import rollout as rollout_lib
from cpg_jax.environments.base import Environment
from cpg_jax.experiment import Experiment

TRAIN_STREAM = 0
EVAL_STREAM = 1
INIT_STREAM = 2


@flax.struct.dataclass
class TrainState:
  """Everything that evolves during training, for one seed (or, batched, for
  all seeds along a leading `[seeds]` axis).

  Attributes:
    params: the score model's parameters.
    opt_state: the Optax state.
    step: int32 `[]`, gradient steps taken so far (frozen seeds count too).
    key_data: uint32 raw data of the seed's base PRNG key (new-style keys
      cannot be checkpointed, their data can).
    diverged: bool `[]`, True once a non-finite loss or gradient was seen.
    diverged_step: int32 `[]`, the step at which it was seen, -1 if never.
  """

  params: Any
  opt_state: Any
  step: jax.Array
  key_data: jax.Array
  diverged: jax.Array
  diverged_step: jax.Array

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.key_data)


def stream_key(base_key: jax.Array, stream: int, step: jax.Array | int) -> jax.Array:
  """The key of one use (training, evaluation, init) at one step."""
  return jax.random.fold_in(jax.random.fold_in(base_key, stream), step)


def init_state(experiment: Experiment, seed: int) -> TrainState:
  """The initial state of one seed."""
  base = jax.random.key(seed)
  params = experiment.model.init(
      stream_key(base, INIT_STREAM, 0), jnp.zeros((1,), jnp.int32))["params"]
  return TrainState(
      params=params,
      opt_state=experiment.optimizer.init(params),
      step=jnp.zeros((), jnp.int32),
      key_data=jax.random.key_data(base),
      diverged=jnp.zeros((), bool),
      diverged_step=jnp.full((), -1, jnp.int32),
  )


def init_states(experiment: Experiment, seeds) -> TrainState:
  """States of several seeds stacked along a leading `[seeds]` axis."""
  states = [init_state(experiment, int(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train_step(
    experiment: Experiment, env: Environment, state: TrainState
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One on-policy gradient step for one seed (method.md §6).

  Draw `batch_size` contexts, score all items, sample candidates, let the LSR
  choose, observe rewards, and apply one optimiser step on the estimator's
  surrogate loss. Scores are computed once, inside `value_and_grad`; sampling
  reads them under `stop_gradient`.

  Returns the new state and per-step metrics: `loss`, `reward` (mean
  aggregated observed reward of the batch), `finite`.
  """
  config = experiment.config
  key = stream_key(state.key, TRAIN_STREAM, state.step)
  key_contexts, key_rollout = jax.random.split(key)
  context_ids = env.sample_contexts(key_contexts, config.batch_size)

  def loss_and_rollout(params):
    scores = experiment.score_table(params, context_ids)
    rollout = rollout_lib.collect_rollout(
        key_rollout, env, context_ids, scores, config.num_candidates,
        experiment.lsr, experiment.position_weights)
    return experiment.loss_fn(scores, rollout), rollout

  (loss, rollout), grads = jax.value_and_grad(loss_and_rollout, has_aux=True)(state.params)
  updates, new_opt_state = experiment.optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
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


def make_train_chunk(experiment: Experiment, step_fn=train_step):
  """A jitted `chunk(states, env, num_steps) -> (states, metrics)`.

  `states` carry a leading `[seeds]` axis; `num_steps` is static (one
  compilation per distinct chunk length). Metrics are `[num_steps, seeds]`.
  `step_fn` can be replaced (tests inject failures through it).
  """

  def one_step_all_seeds(env, states):
    return jax.vmap(lambda s: step_fn(experiment, env, s))(states)

  def chunk(states, env, num_steps):
    def body(carry, _):
      return one_step_all_seeds(env, carry)
    return jax.lax.scan(body, states, None, length=num_steps)

  # No buffer donation: an asynchronous checkpoint may still be reading the
  # previous states while the next chunk runs.
  return jax.jit(chunk, static_argnums=2)
