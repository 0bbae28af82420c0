"""The PRNG streams of a run: one key per (seed, use, step), never reused.

Each seed s has a base key `jax.random.key(s)`. A use (training, evaluation,
initialisation) at step t draws from `fold_in(fold_in(base, stream), t)`.
Nothing random is carried from step to step, so a run split into any number
of chunks or invocations sees exactly the same randomness.
"""

from __future__ import annotations

import jax

TRAIN_STREAM = 0
EVAL_STREAM = 1
INIT_STREAM = 2


def stream_key(base_key: jax.Array, stream: int, step: jax.Array | int) -> jax.Array:
  """The key of one use (training, evaluation, init) at one step."""
  return jax.random.fold_in(jax.random.fold_in(base_key, stream), step)
