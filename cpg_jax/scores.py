"""The ESR's scores of every item, dense or item-blocked, behind one interface.

The Plackett-Luce code needs four things of the scores s^m[b, i] of M models
for B contexts over N items: gather the scores of given items, log-sum-exp
over all items but an excluded set, and (perturbed) top-k with an excluded
set. Two implementations:

  DenseScores     the `[M, batch, items]` matrix; plain autodiff.
  BlockedScores   the two-tower factors, context vectors `[M, batch, d]` and
                  item vectors `[M, items, d]`; every pass over the items is a
                  `lax.scan` over blocks of `block_size` items with a running
                  log-sum-exp or a running top-k merge, and the log-sum-exp's
                  gradient recomputes each block (a custom VJP), so memory is
                  O(batch x (block + K)), never O(batch x items).

Both draw the same Gumbel noise for the same key (`cpg_jax.noise`: the noise
of an item depends on (key, model, row, item id) only), so they sample the
same candidates; tests check that they agree.

Excluded sets are given as item ids `[batch, E]` (entries may repeat; ids
outside [0, items) are ignored), never as `[batch, items]` masks, so that the
blocked form stays O(batch x (block + E)).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

import kernels
from cpg_jax import log_space
from cpg_jax import noise as noise_lib


def _noise_words(key: jax.Array, model: int) -> jax.Array:
  return noise_lib.seed_words(jax.random.fold_in(key, model))


def _exclusion_mask(excluded: jax.Array | None, batch: int, start, width: int) -> jax.Array:
  """bool `[batch, width]`: which of items start..start+width-1 are excluded."""
  mask = jnp.zeros((batch, width), dtype=bool)
  if excluded is None or excluded.shape[1] == 0:
    return mask
  local = excluded - start
  inside = (local >= 0) & (local < width)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], excluded.shape)
  # Out-of-block ids go to index `width`, which mode="drop" discards.
  return mask.at[rows, jnp.where(inside, local, width)].set(True, mode="drop")


class DenseScores(flax.struct.PyTreeNode):
  """Scores as a dense matrix.

  Attributes:
    values: float `[M, batch, items]`.
    noise_generator: "hash" (default) or "threefry" (`jax.random.gumbel`).
  """

  values: jax.Array
  noise_generator: str = flax.struct.field(pytree_node=False, default="hash")

  @property
  def num_models(self) -> int:
    return self.values.shape[0]

  @property
  def batch_size(self) -> int:
    return self.values.shape[1]

  @property
  def num_items(self) -> int:
    return self.values.shape[2]

  def stop_gradient(self) -> "DenseScores":
    return self.replace(values=jax.lax.stop_gradient(self.values))

  def gather(self, items: jax.Array) -> jax.Array:
    """Scores of `items` `[batch, n]` under every model: `[M, batch, n]`."""
    return jnp.take_along_axis(self.values, items[None], axis=-1)

  def logsumexp(self, excluded: jax.Array | None = None) -> jax.Array:
    """LSE over the items not in `excluded` `[batch, E]`: `[M, batch]`.

    -inf with a zero gradient when every item is excluded.
    """
    if excluded is None:
      return jax.nn.logsumexp(self.values, axis=-1)
    keep = ~_exclusion_mask(excluded, self.batch_size, 0, self.num_items)
    return log_space.masked_logsumexp(self.values, keep[None])

  def top_k(self, model: int, k: int, excluded: jax.Array | None = None,
            key: jax.Array | None = None) -> jax.Array:
    """Top-k items of model `model`'s scores (+ Gumbel noise if `key`).

    Returns int32 `[batch, k]`, best first; ties go to the lower item id.
    """
    values = jax.lax.stop_gradient(self.values[model])
    if key is not None:
      if self.noise_generator == "hash":
        values = values + noise_lib.hashed_gumbel(
            _noise_words(key, model), jnp.arange(self.batch_size), jnp.arange(self.num_items))
      else:
        values = values + jax.random.gumbel(
            jax.random.fold_in(key, model), values.shape, values.dtype)
    if excluded is not None:
      values = jnp.where(_exclusion_mask(excluded, self.batch_size, 0, self.num_items),
                         -jnp.inf, values)
    return jax.lax.top_k(values, k)[1].astype(jnp.int32)


class BlockedScores(flax.struct.PyTreeNode):
  """Scores kept as two-tower factors, s^m[b, i] = <contexts[m, b], items[m, i]>.

  Attributes:
    contexts: float `[M, batch, d]`.
    items: float `[M, items, d]`.
    block_size: items per block (static).
    top_k_kernel: "xla" (the `lax.scan` path here), "pallas" (the fused
      kernel of `kernels/`, interpreted on CPU) or "auto" (the kernel on
      GPU/TPU, the scan on CPU); used for top-k lists with no excluded items.
  """

  contexts: jax.Array
  items: jax.Array
  block_size: int = flax.struct.field(pytree_node=False, default=65536)
  top_k_kernel: str = flax.struct.field(pytree_node=False, default="xla")

  @property
  def num_models(self) -> int:
    return self.contexts.shape[0]

  @property
  def batch_size(self) -> int:
    return self.contexts.shape[1]

  @property
  def num_items(self) -> int:
    return self.items.shape[1]

  def stop_gradient(self) -> "BlockedScores":
    return self.replace(contexts=jax.lax.stop_gradient(self.contexts),
                        items=jax.lax.stop_gradient(self.items))

  def dense(self) -> DenseScores:
    """The `[M, batch, items]` matrix (tests and small catalogues only)."""
    return DenseScores(jnp.einsum("mbd,mnd->mbn", self.contexts, self.items,
                                  precision=jax.lax.Precision.HIGHEST))

  def gather(self, items: jax.Array) -> jax.Array:
    """Scores of `items` `[batch, n]` under every model: `[M, batch, n]`."""
    vectors = self.items[:, items]  # [M, batch, n, d]
    return jnp.einsum("mbd,mbnd->mbn", self.contexts, vectors,
                      precision=jax.lax.Precision.HIGHEST)

  def logsumexp(self, excluded: jax.Array | None = None) -> jax.Array:
    """LSE over the items not in `excluded` `[batch, E]`: `[M, batch]`."""
    if excluded is None:
      excluded = jnp.zeros((self.batch_size, 0), jnp.int32)
    lse = functools.partial(_blocked_logsumexp, block_size=self.block_size)
    return jax.vmap(lse, in_axes=(0, 0, None))(self.contexts, self.items, excluded)

  def top_k(self, model: int, k: int, excluded: jax.Array | None = None,
            key: jax.Array | None = None) -> jax.Array:
    """As `DenseScores.top_k`, in item blocks with a running top-k merge."""
    words = None if key is None else _noise_words(key, model)
    if self.top_k_kernel != "xla" and (excluded is None or excluded.shape[1] == 0):
      _, ids, _ = kernels.fused_topk_lse(
          jax.lax.stop_gradient(self.contexts[model]), jax.lax.stop_gradient(self.items[model]),
          k, words, implementation=self.top_k_kernel, block_items=self.block_size)
      return ids
    return _blocked_top_k(
        jax.lax.stop_gradient(self.contexts[model]), jax.lax.stop_gradient(self.items[model]),
        k, excluded, words, self.block_size)


ScoreTable = DenseScores | BlockedScores


def as_scores(scores) -> ScoreTable:
  """Wraps a dense `[M, batch, items]` array; passes score tables through."""
  if isinstance(scores, (DenseScores, BlockedScores)):
    return scores
  return DenseScores(jnp.asarray(scores))


def _num_blocks(num_items: int, block_size: int) -> tuple[int, int]:
  block = min(block_size, num_items)
  return -(-num_items // block), block


def _block_scores(contexts, items, start, block):
  """Scores of items start..start+block-1 (clamped inside the table) and
  their ids: `[batch, block]`, int32 `[block]`."""
  num_items = items.shape[0]
  # The last block is shifted back to end at the table's end; the items it
  # shares with the previous block are masked by the caller (ids < start).
  first = jnp.minimum(start, num_items - block)
  vectors = jax.lax.dynamic_slice_in_dim(items, first, block, axis=0)
  scores = jnp.dot(contexts, vectors.T, precision=jax.lax.Precision.HIGHEST)
  return scores, (first + jnp.arange(block)).astype(jnp.int32)


def _block_keep(excluded, batch, start, first, block):
  """bool `[batch, block]`: items of this block that count (new, not excluded)."""
  ids = first + jnp.arange(block)
  fresh = (ids >= start)[None, :]
  return fresh & ~_exclusion_mask(excluded, batch, first, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_logsumexp(contexts, items, excluded, block_size):
  """LSE over items (not excluded) of contexts @ items.T, by blocks: `[batch]`.

  Args: contexts `[batch, d]`, items `[items, d]`, excluded int `[batch, E]`.
  """
  return _blocked_logsumexp_fwd(contexts, items, excluded, block_size)[0]


def _blocked_logsumexp_fwd(contexts, items, excluded, block_size):
  num_blocks, block = _num_blocks(items.shape[0], block_size)
  batch = contexts.shape[0]

  def body(carry, j):
    running_max, running_sum = carry
    start = j * block
    scores, ids = _block_scores(contexts, items, start, block)
    keep = _block_keep(excluded, batch, start, ids[0], block)
    block_max = jnp.max(jnp.where(keep, scores, -jnp.inf), axis=1)
    new_max = jnp.maximum(running_max, block_max)
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    rescale = jnp.where(jnp.isfinite(running_max), jnp.exp(running_max - safe_max), 0.0)
    block_sum = jnp.sum(jnp.where(keep, jnp.exp(scores - safe_max[:, None]), 0.0), axis=1)
    return (new_max, running_sum * rescale + block_sum), None

  init = (jnp.full((batch,), -jnp.inf, contexts.dtype), jnp.zeros((batch,), contexts.dtype))
  (running_max, running_sum), _ = jax.lax.scan(body, init, jnp.arange(num_blocks))
  lse = jnp.where(running_sum > 0, running_max + jnp.log(running_sum), -jnp.inf)
  return lse, (contexts, items, excluded, lse)


def _blocked_logsumexp_bwd(block_size, residuals, grad):
  contexts, items, excluded, lse = residuals
  num_items, dim = items.shape
  num_blocks, block = _num_blocks(num_items, block_size)
  batch = contexts.shape[0]
  finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)

  def body(grad_contexts, j):
    start = j * block
    scores, ids = _block_scores(contexts, items, start, block)
    keep = _block_keep(excluded, batch, start, ids[0], block)
    # d lse / d s_i = softmax_i; excluded and already-counted items get 0.
    weights = jnp.where(keep, jnp.exp(scores - finite_lse[:, None]), 0.0) * grad[:, None]
    vectors = jax.lax.dynamic_slice_in_dim(items, ids[0], block, axis=0)
    grad_contexts = grad_contexts + jnp.dot(weights, vectors, precision=jax.lax.Precision.HIGHEST)
    grad_vectors = jnp.dot(weights.T, contexts, precision=jax.lax.Precision.HIGHEST)
    return grad_contexts, (grad_vectors, ids[0])

  grad_contexts, (grad_blocks, firsts) = jax.lax.scan(
      body, jnp.zeros_like(contexts), jnp.arange(num_blocks))

  # Blocks may overlap (the shifted last block); rows of items counted in an
  # earlier block carry zero weight, so adding the blocks up is exact.
  def add_block(acc, args):
    grad_block, first = args
    current = jax.lax.dynamic_slice_in_dim(acc, first, block, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + grad_block, first, axis=0), None

  if num_blocks * block == num_items:
    grad_items = grad_blocks.reshape(num_items, dim)
  else:
    grad_items, _ = jax.lax.scan(add_block, jnp.zeros_like(items), (grad_blocks, firsts))
  return grad_contexts, grad_items, None


_blocked_logsumexp.defvjp(_blocked_logsumexp_fwd, _blocked_logsumexp_bwd)


def _blocked_top_k(contexts, items, k, excluded, words, block_size):
  """Top-k item ids of contexts @ items.T (+ hashed Gumbel noise if `words`),
  by blocks with a running merge: int32 `[batch, k]`, best first."""
  num_blocks, block = _num_blocks(items.shape[0], block_size)
  batch = contexts.shape[0]
  rows = jnp.arange(batch)
  block_k = min(k, block)
  if words is not None:
    salt_a, salt_b = noise_lib.row_salts(words, rows)

  def body(carry, j):
    best_values, best_ids = carry
    start = j * block
    scores, ids = _block_scores(contexts, items, start, block)
    if words is not None:
      uniform = noise_lib.hashed_uniform(salt_a, salt_b, ids)
      scores = scores - jnp.log(-jnp.log(uniform))
    keep = _block_keep(excluded, batch, start, ids[0], block)
    scores = jnp.where(keep, scores, -jnp.inf)
    values, local = jax.lax.top_k(scores, block_k)
    # Earlier blocks hold lower ids and come first: ties keep the lower id.
    merged_values = jnp.concatenate([best_values, values], axis=1)
    merged_ids = jnp.concatenate([best_ids, ids[local]], axis=1)
    top_values, where = jax.lax.top_k(merged_values, k)
    return (top_values, jnp.take_along_axis(merged_ids, where, axis=1)), None

  init = (jnp.full((batch, k), -jnp.inf, contexts.dtype), jnp.full((batch, k), -1, jnp.int32))
  (_, best_ids), _ = jax.lax.scan(body, init, jnp.arange(num_blocks))
  return best_ids
