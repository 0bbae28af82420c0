"""The interface every environment implements.

An environment holds the fixed world of one experiment: a set of contexts, a
catalogue of `num_items` items, the true expected score q(x, a) that the
late-stage rankers see, and the reward distribution. Environments are
immutable pytrees (`flax.struct.dataclass`): their arrays are leaves, so a
jitted training step takes the environment as an argument instead of baking
large tables into the compiled program as constants. Sizes are static fields.

Nothing here knows about the model or the estimators (design.md: one direction).
"""

from __future__ import annotations

import abc

import jax


class Environment(abc.ABC):
  """Abstract environment. Subclasses are `flax.struct.dataclass` pytrees.

  Static attributes (plain Python ints, not traced):
    num_contexts: number of distinct contexts (context ids 0..num_contexts-1).
    num_items: catalogue size N (item ids 0..N-1).
  """

  num_contexts: int
  num_items: int
  # {leaf name: its item axis} for the leaves indexed by item id; these are
  # padded and cut over the mesh's item axis for multi-device runs (the
  # environment then carries `item_shards`, see `numerics.sharding`).
  ITEM_AXES: dict[str, int] = {}

  @abc.abstractmethod
  def sample_contexts(self, key: jax.Array, batch_size: int) -> jax.Array:
    """Draws context ids uniformly. Returns int32 `[batch]`."""

  @abc.abstractmethod
  def expected_score(self, context_ids: jax.Array, item_ids: jax.Array) -> jax.Array:
    """The true expected score q(x, a) that the late-stage rankers rank by.

    Args:
      context_ids: int32 `[batch]`.
      item_ids: int32 `[batch, n]`.
    Returns:
      float32 `[batch, n]`.
    """

  @abc.abstractmethod
  def mean_reward(self, context_ids: jax.Array, item_ids: jax.Array) -> jax.Array:
    """E[r | x, a], the noise-free reward. Shapes as `expected_score`."""

  @abc.abstractmethod
  def sample_reward(
      self, key: jax.Array, context_ids: jax.Array, item_ids: jax.Array
  ) -> jax.Array:
    """One observed reward r ~ p(r | x, a) per pair. Shapes as `expected_score`."""

  @abc.abstractmethod
  def optimal_items(self, context_ids: jax.Array, k: int) -> jax.Array:
    """The k items with the largest q(x, .), best first. int32 `[batch, k]`.

    Must not build a dense `[batch, num_items]` matrix when it would not fit:
    large catalogues are scanned in item blocks with a running top-k.
    """
