"""Candidate sampling for the early-stage ranker (method.md §2).

A candidate set is a Plackett-Luce draw of K items without replacement,
obtained with the Gumbel-top-k trick: the top-K of `scores + Gumbel noise`,
in order, is exactly a PL ordered draw. With M models the K slots are split
as evenly as possible (the first K mod M models get one extra slot), model 1
fills its slots first, its items are removed for every later model, and so on.
The model that filled slot k, m(k), is static: it depends on K and M only.

Everything is vectorised over the batch; the only Python loop is the static
loop over the M models.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


def slot_counts(num_candidates: int, num_models: int) -> tuple[int, ...]:
  """K_m for each model: floor(K/M), plus one for the first K mod M models."""
  if num_models < 1 or num_candidates < num_models:
    raise ValueError(
        f"need 1 <= num_models <= num_candidates, got num_models={num_models}, "
        f"num_candidates={num_candidates}")
  base, extra = divmod(num_candidates, num_models)
  return tuple(base + (1 if m < extra else 0) for m in range(num_models))


def slot_models(counts: Sequence[int]) -> np.ndarray:
  """m(k) for every slot k: int32 `[K]` (static, a NumPy array)."""
  return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def fill_slots(
    values: jax.Array, counts: Sequence[int], excluded: jax.Array | None = None
) -> jax.Array:
  """The sequential per-model slot procedure on given (perturbed) values.

  Model m takes the top-`counts[m]` of `values[m]` among the items no earlier
  model took (and none of `excluded`).

  Args:
    values: float `[M, batch, items]`; scores, or scores plus Gumbel noise.
    counts: static slot counts per model, `len(counts) == M`.
    excluded: optional bool `[batch, items]`, items that may not be taken.
  Returns:
    int32 `[batch, sum(counts)]`: the items in slot order.
  """
  num_models, batch, num_items = values.shape
  chex.assert_equal(len(counts), num_models)
  rows = jnp.arange(batch)[:, None]
  taken = excluded
  picks = []
  for m, count in enumerate(counts):  # Static loop over the M models.
    if count == 0:
      continue
    v = values[m]
    if taken is not None:
      v = jnp.where(taken, -jnp.inf, v)
    _, items = jax.lax.top_k(v, count)
    picks.append(items.astype(jnp.int32))
    if m + 1 < num_models:
      if taken is None:
        taken = jnp.zeros((batch, num_items), dtype=bool)
      taken = taken.at[rows, items].set(True)
  return jnp.concatenate(picks, axis=1)


def sample_candidates(
    key: jax.Array, scores: jax.Array, num_candidates: int
) -> jax.Array:
  """Draws one Plackett-Luce candidate list per context (Gumbel-top-k).

  Args:
    key: PRNG key.
    scores: float `[M, batch, items]`, the ESR scores of each model (not
      differentiated: callers pass `stop_gradient(scores)`).
    num_candidates: K.
  Returns:
    int32 `[batch, K]`, the candidates in draw order; slot k was filled by
    model `slot_models(slot_counts(K, M))[k]`.
  """
  chex.assert_rank(scores, 3)
  counts = slot_counts(num_candidates, scores.shape[0])
  noise = jax.random.gumbel(key, scores.shape, dtype=scores.dtype)
  return fill_slots(scores + noise, counts)


def top_candidates(scores: jax.Array, num_candidates: int) -> jax.Array:
  """The deterministic candidate list used for evaluation: `[batch, K]` int32.

  The same slot procedure as `sample_candidates`, without noise.
  """
  chex.assert_rank(scores, 3)
  return fill_slots(scores, slot_counts(num_candidates, scores.shape[0]))
