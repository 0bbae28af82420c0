"""The training state: everything that evolves, as one explicit pytree.

Nothing hides in globals: a checkpoint of a `TrainState` is the whole truth,
and a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cpg_jax.training import streams
from cpg_jax.training.pipeline import Pipeline


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


def init_state(pipeline: Pipeline, seed: int) -> TrainState:
  """The initial state of one seed."""
  base = jax.random.key(seed)
  params = pipeline.model.init(
      streams.stream_key(base, streams.INIT_STREAM, 0), jnp.zeros((1,), jnp.int32))["params"]
  return TrainState(
      params=params,
      opt_state=pipeline.optimizer.init(params),
      step=jnp.zeros((), jnp.int32),
      key_data=jax.random.key_data(base),
      diverged=jnp.zeros((), bool),
      diverged_step=jnp.full((), -1, jnp.int32),
  )


def init_states(pipeline: Pipeline, seeds) -> TrainState:
  """States of several seeds stacked along a leading `[seeds]` axis."""
  states = [init_state(pipeline, int(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)
