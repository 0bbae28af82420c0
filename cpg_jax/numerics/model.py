"""The early-stage ranker's score model: M two-tower Plackett-Luce scorers.

f^m(x, a) = <u^m_x, v^m_a>, learned ID embeddings of dimension `embedding_dim`
for contexts and items, one pair of tables per model (docs/method.md), both
initialised N(0, 1). An optional per-side MLP tower (`tower_layers`) maps the
ID embedding through hidden layers before the dot product, the hook for
feature towers.
"""

from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


class _Tower(nn.Module):
  """Embedding table (+ optional MLP) for one side of one model."""

  num_ids: int
  embedding_dim: int
  hidden: Sequence[int] = ()

  @nn.compact
  def __call__(self, ids: jax.Array | None) -> jax.Array:
    table = self.param("embedding", nn.initializers.normal(stddev=1.0),
                       (self.num_ids, self.embedding_dim))
    x = table if ids is None else table[ids]
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, name=f"dense_{i}")(x)
      if i + 1 < len(self.hidden):
        x = nn.relu(x)
    return x


class TwoTowerScorer(nn.Module):
  """M independent two-tower scorers.

  Attributes:
    num_contexts: context id range.
    num_items: catalogue size N.
    embedding_dim: d (10 in the paper).
    num_models: M.
    tower_layers: widths of optional Dense layers on each side (empty: plain
      ID embeddings, the paper's model). The last width is the output
      dimension of both towers.
  """

  num_contexts: int
  num_items: int
  embedding_dim: int = 10
  num_models: int = 1
  tower_layers: Sequence[int] = ()

  def setup(self):
    self.context_towers = [
        _Tower(self.num_contexts, self.embedding_dim, tuple(self.tower_layers),
               name=f"context_tower_{m}") for m in range(self.num_models)]
    self.item_towers = [
        _Tower(self.num_items, self.embedding_dim, tuple(self.tower_layers),
               name=f"item_tower_{m}") for m in range(self.num_models)]

  def factors(self, context_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two towers' outputs, the factors of the scores.

    Args:
      context_ids: int32 `[batch]`.
    Returns:
      context vectors `[M, batch, d]` and item vectors `[M, items, d]`.
    """
    chex.assert_rank(context_ids, 1)
    contexts = jnp.stack([self.context_towers[m](context_ids) for m in range(self.num_models)])
    items = jnp.stack([self.item_towers[m](None) for m in range(self.num_models)])
    return contexts, items

  def __call__(self, context_ids: jax.Array) -> jax.Array:
    """Scores of every item for each context: float32 `[M, batch, items]`."""
    contexts, items = self.factors(context_ids)
    return jnp.einsum("mbd,mnd->mbn", contexts, items)
