"""What one pass through the two-stage system leaves for the estimators.

A `Rollout` holds the candidates, the LSR's outputs and their rewards: what
an estimator needs besides the scores. It is produced from the scores under
`stop_gradient` (`training.interaction.collect_rollout`); the estimator then
differentiates the same scores (computed once, inside `value_and_grad`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Rollout:
  """The sampled interaction of one batch of contexts.

  Attributes:
    candidates: int32 `[batch, K]`, the ESR's candidate list in slot order.
    outputs: int32 `[batch, L]`, the item ids the LSR returned.
    rewards: float `[batch, L]`, the observed rewards (never differentiated).
    position_weights: float `[L]`, w_l of the aggregated reward.
  """

  candidates: jax.Array
  outputs: jax.Array
  rewards: jax.Array
  position_weights: jax.Array

  @property
  def num_candidates(self) -> int:
    return self.candidates.shape[-1]

  def aggregated_reward(self) -> jax.Array:
    """R = sum_l w_l r_l: `[batch]`."""
    return jnp.sum(self.rewards * self.position_weights, axis=-1)


def position_weights(num_outputs: int, scheme: str = "mean") -> jax.Array:
  """w_l for l = 1..L: "mean" (1/L each, the paper's), "sum" (1 each) or
  "dcg" (1/log2(l+1), normalised to sum to 1). float32 `[L]`."""
  if scheme == "mean":
    return jnp.full((num_outputs,), 1.0 / num_outputs, jnp.float32)
  if scheme == "sum":
    return jnp.ones((num_outputs,), jnp.float32)
  if scheme == "dcg":
    w = 1.0 / jnp.log2(jnp.arange(num_outputs, dtype=jnp.float32) + 2.0)
    return w / jnp.sum(w)
  raise ValueError(f"position_weights must be 'mean', 'sum' or 'dcg', got {scheme!r}")
