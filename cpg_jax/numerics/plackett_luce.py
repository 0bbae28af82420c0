"""Plackett-Luce log-probabilities used by the estimators (docs/method.md).

All functions take the scores of every model as a score table
(`numerics.scores`: dense `[M, batch, items]` or item-blocked factors) and
are differentiable in them. Which items were drawn (or are in a
deterministic prefix list) is never differentiated; the scores of those
items are.

No probability is formed as a difference of sums: the mass of the items not
yet drawn is always assembled from the mass of the never-drawn items plus a
reverse cumulative log-sum-exp of the drawn ones (no cancellation).
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics import log_space
from cpg_jax.numerics import sampling
from cpg_jax.numerics.scores import ScoreTable


def _per_slot(values: jax.Array, models: np.ndarray) -> jax.Array:
  """Picks model m(k) for each slot k: `[M, batch, K]` -> `[batch, K]`."""
  return values[models, :, np.arange(len(models))].T


def _remaining_log_mass(scores: ScoreTable, drawn: jax.Array, models: np.ndarray,
                        never_lse: jax.Array | None = None) -> jax.Array:
  """log of the mass of the items not among drawn[:k], for every slot k.

  Args:
    scores: the score table.
    drawn: int32 `[batch, n]`, distinct items in slot order (n <= K).
    models: static `[K]` slot models, K >= n; slot k uses model models[k].
    never_lse: optional `[M, batch]`, the LSE over the items not in `drawn`
      when the caller has it cheaper than a pass over all items.
  Returns:
    `[batch, K]`: for slot k, LSE of scores[m(k)] over the items that are not
    in drawn[:k]. Slots k >= n see every drawn item as removed.
  """
  num_slots = len(models)
  if never_lse is None:
    never_lse = scores.logsumexp(excluded=drawn)  # [M, batch]
  drawn_scores = scores.gather(drawn)  # [M, batch, n]
  # Reverse cumulative LSE from slot k on; -inf past the end of `drawn`.
  if drawn.shape[1]:
    tail = jax.lax.cumlogsumexp(drawn_scores, axis=2, reverse=True)
  else:
    tail = drawn_scores
  pad = num_slots - drawn.shape[1]
  if pad:
    tail = jnp.concatenate(
        [tail, jnp.full(tail.shape[:2] + (pad,), -jnp.inf, tail.dtype)], axis=-1)
  tail = _per_slot(tail, models)  # [batch, K]
  never_lse = never_lse[models].T  # [batch, K]
  return jnp.logaddexp(never_lse, tail)


def sequential_log_prob(
    scores: ScoreTable, candidates: jax.Array, models: np.ndarray
) -> jax.Array:
  """log pi(C | x) of an ordered candidate list drawn without replacement.

  log pi = sum_k [ s^{m(k)}_{c_k} - LSE_{a not in c_{<k}} s^{m(k)}_a ]  (§4.1).

  Args:
    scores: the score table `[M, batch, items]`, differentiated.
    candidates: int32 `[batch, K]`, distinct items in draw order.
    models: static int `[K]`, the model of each slot.
  Returns:
    `[batch]`.
  """
  chex.assert_rank(candidates, 2)
  chosen = _per_slot(scores.gather(candidates), models)  # [batch, K]
  normaliser = _remaining_log_mass(scores, candidates, models)
  return jnp.sum(chosen - normaliser, axis=-1)


def swr_log_prob(
    scores: ScoreTable, candidates: jax.Array, models: np.ndarray
) -> jax.Array:
  """log of the with-replacement approximation of pi(C | x) (§4.2): `[batch]`.

  sum_k [ s^{m(k)}_{c_k} - LSE_a s^{m(k)}_a ].
  """
  chosen = _per_slot(scores.gather(candidates), models)
  log_norm = scores.logsumexp()[models].T  # [batch, K]
  return jnp.sum(chosen - log_norm, axis=-1)


def _prefixes_excluding_multi_model(
    scores: ScoreTable, items: jax.Array, counts: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
  """T_{K-1}(a) for any M, for L items at once, from one top list per model.

  The slot procedure with item a excluded lets model m skip at most
  P_{m-1} + 1 items (the earlier models' picks and a), so its picks lie in
  its own overall top-(P_{m-1} + 1 + K'_m) list, K'_m its prefix slots and
  P_m their running sum. One top-k pass per model therefore serves every
  output; the picks per output are the first K'_m entries of that list not
  already taken (small [list x taken] comparisons, no pass over the items).

  The items outside T_{K-1}(a) are the items outside the union S of those
  lists plus the entries of S not in T_{K-1}(a) (each counted once), so one
  LSE over the items not in S serves every output as well.

  Args:
    scores: the score table `[M, batch, items]`.
    items: int32 `[batch, L]`.
    counts: static slot counts per model (sum K).
  Returns:
    int32 `[batch, L, K-1]`, the prefixes, and `[M, batch, L]`, the LSE of
    each model's scores over the items outside each prefix (differentiable).
  """
  prefix_counts = list(counts)
  prefix_counts[-1] -= 1  # Slot K always belongs to the last model (M <= K).
  batch, num_outputs = items.shape
  lists, skipped_so_far = [], 1  # a is always skipped
  for m, count in enumerate(prefix_counts):
    if count:
      depth = min(skipped_so_far + count, scores.num_items)
      lists.append((count, scores.top_k(m, depth)))  # [batch, depth], no noise
      skipped_so_far += count

  def one_output(item):  # item [batch] -> prefix [batch, K-1]
    taken = item[:, None]
    for count, ranked in lists:
      free = ~jnp.any(ranked[:, :, None] == taken[:, None, :], axis=-1)  # [batch, depth]
      rank = jnp.cumsum(free, axis=1)  # 1-based rank among the free entries
      pick = free[:, :, None] & (rank[:, :, None] == jnp.arange(1, count + 1))
      picks = jnp.sum(jnp.where(pick, ranked[:, :, None], 0), axis=1)  # [batch, count]
      taken = jnp.concatenate([taken, picks.astype(jnp.int32)], axis=1)
    return taken[:, 1:]

  if not lists:  # K = 1: empty prefixes, every item is outside them.
    prefixes = jnp.zeros((batch, num_outputs, 0), jnp.int32)
    return prefixes, jnp.broadcast_to(scores.logsumexp()[:, :, None],
                                      (scores.num_models, batch, num_outputs))
  prefixes = jax.vmap(one_output, in_axes=1, out_axes=1)(items)  # [batch, L, K-1]
  union = jnp.concatenate([ranked for _, ranked in lists], axis=1)  # [batch, U]
  size = union.shape[1]
  earlier = np.tril(np.ones((size, size), bool), k=-1)  # [j, i]: i < j
  repeated = jnp.any((union[:, :, None] == union[:, None, :]) & earlier, axis=-1)
  in_prefix = jnp.any(union[:, None, :, None] == prefixes[:, :, None, :], axis=-1)
  keep = ~repeated[:, None, :] & ~in_prefix  # [batch, L, U]
  union_scores = scores.gather(union)  # [M, batch, U]
  inside = log_space.masked_logsumexp(
      jnp.broadcast_to(union_scores[:, :, None, :], (scores.num_models, *keep.shape)),
      keep[None])  # [M, batch, L]
  outside = scores.logsumexp(excluded=union)[:, :, None]  # [M, batch, 1]
  return prefixes, jnp.logaddexp(outside, inside)  # [M, batch, L]


def _prefix_excluding_single_model(
    top: jax.Array, items: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """T_{K-1}(a) for M = 1 from the deterministic top-K list, for L items at once.

  Removing a from the top-K list (or, if a is not in it, dropping its last
  entry) gives the top-(K-1) of the other items.

  Args:
    top: int32 `[batch, K]`, the deterministic top-K in order.
    items: int32 `[batch, L]`.
  Returns:
    int32 `[batch, L, K-1]`, the prefixes, and int32 `[batch, L]`, the entry
    of `top` each one left out (a itself, or the last entry).
  """
  num_slots = top.shape[1]
  hit = top[:, None, :] == items[:, :, None]  # [batch, L, K]
  pos = jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), num_slots - 1)  # [batch, L]
  j = jnp.arange(num_slots - 1, dtype=jnp.int32)
  # Entry j of the result is top[j] left of a's position, top[j + 1] from it on.
  # A gather, not the two shifted slices top[:-1] / top[1:]: XLA folds a slice
  # that does not start at 0 into the top_k's internal sort, which then stops
  # being recognised as a top-k and runs as a full O(N log N) sort of the
  # scores (measured 15x slower for the whole CA-PG step, N=1000, CPU).
  index = j[None, None, :] + (j[None, None, :] >= pos[:, :, None]).astype(jnp.int32)
  prefixes = jnp.take_along_axis(
      jnp.broadcast_to(top[:, None, :], index.shape[:2] + (num_slots,)), index, axis=-1)
  return prefixes, jnp.take_along_axis(top, pos, axis=1)


def ca_inclusion_log_prob(
    scores: ScoreTable, items: jax.Array, num_candidates: int
) -> jax.Array:
  """The CA-PG closed-form log P(a in C | x) for each given item (§4.3).

  P(a in C) ~= 1 - prod_{k=1..K} (1 - p_k(a)),
  p_k(a) = exp(s^{m(k)}_a) / sum_{b not in T_{k-1}(a)} exp(s^{m(k)}_b),

  with T_{k-1}(a) the deterministic first k-1 slots of the other items. The
  product is formed in log space (`log_space.log_one_minus_prod_one_minus`).

  Args:
    scores: the score table `[M, batch, items]`, differentiated.
    items: int32 `[batch, L]`, the rewarded items (LSR outputs).
    num_candidates: K.
  Returns:
    `[batch, L]`.
  """
  chex.assert_rank(items, 2)
  num_models = scores.num_models
  counts = sampling.slot_counts(num_candidates, num_models)
  models = sampling.slot_models(counts)
  if num_models == 1:
    top = sampling.top_candidates(scores, num_candidates)
    prefixes, left_out = _prefix_excluding_single_model(top, items)  # [batch, L, K-1]
    # The items outside T_{K-1}(a) are those outside the top-K list plus the
    # one entry left out: one pass over the items serves every output.
    never_lse = jnp.logaddexp(scores.logsumexp(excluded=top)[:, :, None],
                              scores.gather(left_out))  # [1, batch, L]
    return _closed_form_from_prefixes(scores, items, prefixes, models, never_lse)
  prefixes, outside_lse = _prefixes_excluding_multi_model(scores, items, counts)
  return _closed_form_from_prefixes(scores, items, prefixes, models, outside_lse)


def _closed_form_from_prefixes(
    scores: ScoreTable, items: jax.Array, prefixes: jax.Array, models: np.ndarray,
    never_lse: jax.Array | None = None,
) -> jax.Array:
  """Evaluates the closed form given T_{K-1}(a) for each item. `[batch, L]`.

  `never_lse` `[M, batch, L]`, if given, is the LSE over the items outside
  each T_{K-1}(a); otherwise it is computed per output.
  """

  def one_output(item, prefix, outside_lse=None):
    # item [batch], prefix [batch, K-1], outside_lse [M, batch] or None.
    log_z = _remaining_log_mass(scores, prefix, models, outside_lse)  # [batch, K]
    own = scores.gather(item[:, None])[:, :, 0]  # [M, batch]
    own = own[models].T  # [batch, K]
    return log_space.log_one_minus_prod_one_minus(own - log_z, axis=-1)

  if never_lse is None:
    return jax.vmap(one_output, in_axes=(1, 1), out_axes=1)(items, prefixes)
  return jax.vmap(one_output, in_axes=(1, 1, 2), out_axes=1)(items, prefixes, never_lse)


def top1_log_prob(
    scores: ScoreTable,
    items: jax.Array,
    num_candidates: int,
    combine: str = "sum",
) -> jax.Array:
  """CA-PG-SwR (TOP1) log-inclusion of each given item (§4.4): `[batch, L]`.

  combine="sum":       sum_m K_m (s^m_a - LSE_b s^m_b)   (the project default)
  combine="logsumexp": logsumexp_m of the same terms     (the other published copy)
  """
  log_softmax = scores.gather(items) - scores.logsumexp()[:, :, None]  # [M, batch, L]
  counts = jnp.asarray(sampling.slot_counts(num_candidates, scores.num_models),
                       dtype=log_softmax.dtype)
  terms = counts[:, None, None] * log_softmax
  if combine == "sum":
    return jnp.sum(terms, axis=0)
  if combine == "logsumexp":
    return jax.nn.logsumexp(terms, axis=0)
  raise ValueError(f"combine must be 'sum' or 'logsumexp', got {combine!r}")
