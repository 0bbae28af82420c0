"""The ESR's scores of every item, dense or item-blocked, behind one interface.

The Plackett-Luce code needs four things of the scores s^m[b, i] of M models
for B contexts over N items: gather the scores of given items, log-sum-exp
over all items but an excluded set, and (perturbed) top-k with an excluded
set. Two implementations (a *score table* is either):

  DenseScores     the `[M, batch, items]` matrix; plain autodiff.
  BlockedScores   the two-tower factors, context vectors `[M, batch, d]` and
                  item vectors `[M, items, d]`; every pass over the items is a
                  scan over item blocks (`numerics.blocked`) with a running
                  log-sum-exp or a running top-k merge, and the log-sum-exp's
                  gradient recomputes each block (a custom VJP), so memory is
                  O(batch x (block + K)), never O(batch x items).

`ScoreTableSpec` (static) says which one a batch gets; `ScoreTableSpec.build`
is the one place a table is made from the model's factors.

Both draw the same Gumbel noise for the same key (`numerics.noise`: the noise
of an item depends on (key, model, row, item id) only), so they sample the
same candidates; tests check that they agree.

Excluded sets are given as item ids `[batch, E]` (entries may repeat; ids
outside [0, items) are ignored), never as `[batch, items]` masks, so that the
blocked form stays O(batch x (block + E)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from cpg_jax.numerics import blocked
from cpg_jax.numerics import log_space
from cpg_jax.numerics import noise as noise_lib
from cpg_jax.numerics.sharding import ItemShards, varying_like

SCORE_PATHS = ("auto", "dense", "blocked")
NOISE_GENERATORS = ("hash", "threefry")
_HIGHEST = jax.lax.Precision.HIGHEST

# A fused top-k over the factors: (contexts [batch, d], items [items, d], k,
# noise words or None, block_size) -> (values [batch, k], int32 ids [batch, k]),
# best first, ties to the lower id, the noise of `numerics.noise`.
# `kernels.FusedTopK` is one.
FusedTopK = Callable[..., jax.Array]


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


class _Sizes:
  """`num_models`, `batch_size` and `num_items` of a table from its `shape`
  (M, batch, items)."""

  @property
  def num_models(self) -> int:
    return self.shape[0]

  @property
  def batch_size(self) -> int:
    return self.shape[1]

  @property
  def num_items(self) -> int:
    return self.shape[2]


class DenseScores(_Sizes, flax.struct.PyTreeNode):
  """Scores as a dense matrix.

  Attributes:
    values: float `[M, batch, items]`.
    noise_generator: "hash" (default) or "threefry" (`jax.random.gumbel`).
    id_offset: None, or int32 `[]`: the global id of item 0 of this table
      (a shard of the catalogue, `ShardedScores`); the hashed noise of an
      item is drawn from its global id.
  """

  values: jax.Array
  noise_generator: str = flax.struct.field(pytree_node=False, default="hash")
  id_offset: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.values.shape

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
    return self.top_k_with_values(model, k, excluded, key)[1]

  def top_k_with_values(self, model: int, k: int, excluded: jax.Array | None = None,
                        key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """As `top_k`, with the (perturbed) values: (float `[batch, k]`, int32
    `[batch, k]`); excluded items are -inf. Not differentiated."""
    values = jax.lax.stop_gradient(self.values[model])
    if key is not None:
      if self.noise_generator == "hash":
        values = values + noise_lib.hashed_gumbel(
            _noise_words(key, model), jnp.arange(self.batch_size),
            _with_offset(jnp.arange(self.num_items), self.id_offset))
      else:
        values = values + jax.random.gumbel(
            jax.random.fold_in(key, model), values.shape, values.dtype)
    if excluded is not None:
      values = jnp.where(_exclusion_mask(excluded, self.batch_size, 0, self.num_items),
                         -jnp.inf, values)
    top_values, ids = jax.lax.top_k(values, k)
    return top_values, ids.astype(jnp.int32)


class BlockedScores(_Sizes, flax.struct.PyTreeNode):
  """Scores kept as two-tower factors, s^m[b, i] = <contexts[m, b], items[m, i]>.

  Attributes:
    contexts: float `[M, batch, d]`.
    items: float `[M, items, d]`.
    block_size: items per block (static).
    fused_top_k: None (the blocked scan here) or a fused implementation of
      the same top-k (`FusedTopK`, e.g. the Pallas kernel of `kernels/`),
      used for top-k lists with no excluded items (static).
    id_offset: as in `DenseScores` (not with `fused_top_k`).
    num_valid: None, or int32 `[]`: only the first `num_valid` rows are
      items (the rest is a shard's padding, never counted or chosen).
  """

  contexts: jax.Array
  items: jax.Array
  block_size: int = flax.struct.field(pytree_node=False, default=65536)
  fused_top_k: Optional[FusedTopK] = flax.struct.field(pytree_node=False, default=None)
  id_offset: jax.Array | None = None
  num_valid: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.contexts.shape[0], self.contexts.shape[1], self.items.shape[1])

  def stop_gradient(self) -> "BlockedScores":
    return self.replace(contexts=jax.lax.stop_gradient(self.contexts),
                        items=jax.lax.stop_gradient(self.items))

  def dense(self) -> DenseScores:
    """The `[M, batch, items]` matrix (tests and small catalogues only)."""
    return DenseScores(jnp.einsum("mbd,mnd->mbn", self.contexts, self.items,
                                  precision=_HIGHEST))

  def gather(self, items: jax.Array) -> jax.Array:
    """Scores of `items` `[batch, n]` under every model: `[M, batch, n]`."""
    vectors = self.items[:, items]  # [M, batch, n, d]
    return jnp.einsum("mbd,mbnd->mbn", self.contexts, vectors, precision=_HIGHEST)

  def logsumexp(self, excluded: jax.Array | None = None) -> jax.Array:
    """LSE over the items not in `excluded` `[batch, E]`: `[M, batch]`."""
    if excluded is None:
      excluded = jnp.zeros((self.batch_size, 0), jnp.int32)
    lse = functools.partial(_blocked_logsumexp, block_size=self.block_size)
    return jax.vmap(lse, in_axes=(0, 0, None, None))(self.contexts, self.items, excluded,
                                                      self.num_valid)

  def top_k(self, model: int, k: int, excluded: jax.Array | None = None,
            key: jax.Array | None = None) -> jax.Array:
    """As `DenseScores.top_k`, in item blocks with a running top-k merge."""
    return self.top_k_with_values(model, k, excluded, key)[1]

  def top_k_with_values(self, model: int, k: int, excluded: jax.Array | None = None,
                        key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """As `DenseScores.top_k_with_values`, in item blocks."""
    words = None if key is None else _noise_words(key, model)
    contexts = jax.lax.stop_gradient(self.contexts[model])
    items = jax.lax.stop_gradient(self.items[model])
    if self.fused_top_k is not None and (excluded is None or excluded.shape[1] == 0):
      return self.fused_top_k(contexts, items, k, words, self.block_size)
    return _blocked_top_k(contexts, items, k, excluded, words, self.block_size,
                          self.id_offset, self.num_valid)


class ShardedScores(_Sizes, flax.struct.PyTreeNode):
  """Scores of a catalogue cut over a mesh axis; built inside `shard_map`.

  Each device holds its own rows (`numerics.sharding.ItemShards`) as a dense
  or item-blocked table; every operation works on the local rows and
  combines the shards with collectives: `gather` takes each item's score
  from the shard that owns it, `logsumexp` merges the shards' log-sum-exps,
  `top_k` merges the shards' top-k lists (exact: every element of the global
  top-k is in its own shard's list). The padding rows past N are excluded
  from everything. Gradients flow through all of it; the item-blocked scan
  still runs inside each shard, so memory per device is O(batch x block).

  Attributes:
    local: the table of this device's rows, `[M, batch, local_size]`, with
      `id_offset` its first global id (its contexts vary over the item axis).
    shards: how the catalogue is cut (static).
  """

  local: DenseScores | BlockedScores
  shards: ItemShards = flax.struct.field(pytree_node=False)

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.local.num_models, self.local.batch_size, self.shards.num_items)

  def stop_gradient(self) -> "ShardedScores":
    return self.replace(local=self.local.stop_gradient())

  def _local_excluded(self, excluded: jax.Array | None) -> jax.Array | None:
    """The global `excluded` as this shard's local indices (other shards'
    ids fall outside it and are ignored). The padding rows are masked by the
    local table itself."""
    return None if excluded is None else self.shards.to_local(excluded)

  def gather(self, items: jax.Array) -> jax.Array:
    """Scores of global `items` `[batch, n]` under every model: `[M, batch, n]`."""
    local = self.shards.to_local(items)
    mine = (local >= 0) & (local < self.shards.local_size)
    values = self.local.gather(jnp.clip(local, 0, self.shards.local_size - 1))
    return jax.lax.psum(jnp.where(mine[None], values, 0.0), self.shards.axis)

  def logsumexp(self, excluded: jax.Array | None = None) -> jax.Array:
    """LSE over the items not in `excluded` `[batch, E]` (global ids): `[M, batch]`."""
    return self.shards.merge_logsumexp(self.local.logsumexp(self._local_excluded(excluded)))

  def top_k(self, model: int, k: int, excluded: jax.Array | None = None,
            key: jax.Array | None = None) -> jax.Array:
    """As `DenseScores.top_k`, over the whole catalogue: global ids."""
    return self.top_k_with_values(model, k, excluded, key)[1]

  def top_k_with_values(self, model: int, k: int, excluded: jax.Array | None = None,
                        key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    values, ids = self.local.top_k_with_values(
        model, min(k, self.shards.local_size), self._local_excluded(excluded), key)
    return self.shards.merge_top_k(values, ids + self.shards.offset(), k)


ScoreTable = DenseScores | BlockedScores | ShardedScores


@dataclasses.dataclass(frozen=True)
class ScoreTableSpec:
  """How a batch of scores is held (static; part of a run's spec).

  Attributes:
    path: "dense", "blocked", or "auto" (blocked when the dense matrix would
      exceed `dense_budget_mb` and the noise is hashed).
    item_block_size: items per block on the blocked path.
    dense_budget_mb: the largest dense `[M, batch, items]` float32 matrix.
    noise_generator: "hash" or "threefry" (dense path only).
    fused_top_k: the blocked path's fused top-k, or None (see
      `BlockedScores`).
  """

  path: str = "auto"
  item_block_size: int = 65536
  dense_budget_mb: float = 1024.0
  noise_generator: str = "hash"
  fused_top_k: Optional[FusedTopK] = None

  def uses_blocked(self, num_models: int, batch_size: int, num_items: int) -> bool:
    """Whether a batch of this shape is scored in item blocks."""
    if self.path != "auto":
      return self.path == "blocked"
    dense_bytes = 4 * num_models * batch_size * num_items
    return dense_bytes > self.dense_budget_mb * 2**20 and self.noise_generator == "hash"

  def build(self, contexts: jax.Array, items: jax.Array,
            shards: ItemShards | None = None) -> ScoreTable:
    """The score table of the two-tower factors; differentiable in both.

    Args:
      contexts: float `[M, batch, d]`, the context towers' outputs.
      items: float `[M, items, d]`, the item towers' outputs; inside
        `shard_map` with `shards`, this device's `[M, local_size, d]` rows.
      shards: how the catalogue is cut over the mesh (None: not cut).
    """
    num_models, batch_size, _ = contexts.shape
    offset = num_valid = None
    if shards is not None:
      # The contexts meet every shard's rows: their gradient is summed over
      # the item axis (the transpose of this cast).
      contexts = jax.lax.pcast(contexts, (shards.axis,), to="varying")
      offset = shards.offset()
      num_valid = jnp.clip(shards.num_items - offset, 0, shards.local_size)
    if self.uses_blocked(num_models, batch_size, items.shape[1]):
      local = BlockedScores(contexts, items, self.item_block_size, self.fused_top_k, offset,
                            num_valid)
    else:
      values = jnp.einsum("mbd,mnd->mbn", contexts, items)
      if shards is not None:  # A shard's padding rows are not items.
        values = jnp.where(jnp.arange(items.shape[1]) < num_valid, values, -jnp.inf)
      local = DenseScores(values, noise_generator=self.noise_generator, id_offset=offset)
    return local if shards is None else ShardedScores(local, shards)


def _block_scores(contexts, items, block: blocked.Block, size: int) -> jax.Array:
  """Scores `[batch, size]` of the items that `block` reads."""
  return jnp.dot(contexts, blocked.rows(items, block, size).T, precision=_HIGHEST)


def _block_keep(excluded, batch, block: blocked.Block, size: int,
                num_valid: jax.Array | None = None) -> jax.Array:
  """bool `[batch, size]`: items of this block that count (fresh, not
  excluded, and among the first `num_valid` rows if given)."""
  keep = block.fresh[None, :] & ~_exclusion_mask(excluded, batch, block.first, size)
  if num_valid is not None:
    keep = keep & (block.ids < num_valid)[None, :]
  return keep


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_logsumexp(contexts, items, excluded, num_valid, block_size):
  """LSE over items (not excluded, among the first `num_valid` if given) of
  contexts @ items.T, by blocks: `[batch]`.

  Args: contexts `[batch, d]`, items `[items, d]`, excluded int `[batch, E]`,
  num_valid None or int32 `[]`.
  """
  return _blocked_logsumexp_fwd(contexts, items, excluded, num_valid, block_size)[0]


def _blocked_logsumexp_fwd(contexts, items, excluded, num_valid, block_size):
  _, size = blocked.layout(items.shape[0], block_size)
  batch = contexts.shape[0]

  def body(state, block):
    scores = _block_scores(contexts, items, block, size)
    keep = _block_keep(excluded, batch, block, size, num_valid)
    return blocked.lse_update(state, scores, keep), None

  state, _ = blocked.scan(body, blocked.lse_init(batch, contexts.dtype), items.shape[0],
                          block_size, like=contexts)
  lse = blocked.lse_value(state)
  return lse, (contexts, items, excluded, num_valid, lse)


def _blocked_logsumexp_bwd(block_size, residuals, grad):
  contexts, items, excluded, num_valid, lse = residuals
  num_items, dim = items.shape
  num_blocks, size = blocked.layout(num_items, block_size)
  batch = contexts.shape[0]
  finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)

  def body(grad_contexts, block):
    scores = _block_scores(contexts, items, block, size)
    keep = _block_keep(excluded, batch, block, size, num_valid)
    # d lse / d s_i = softmax_i; excluded and already-counted items get 0.
    weights = jnp.where(keep, jnp.exp(scores - finite_lse[:, None]), 0.0) * grad[:, None]
    vectors = blocked.rows(items, block, size)
    grad_contexts = grad_contexts + jnp.dot(weights, vectors, precision=_HIGHEST)
    grad_vectors = jnp.dot(weights.T, contexts, precision=_HIGHEST)
    return grad_contexts, (grad_vectors, block.first)

  grad_contexts, (grad_blocks, firsts) = blocked.scan(
      body, jnp.zeros_like(contexts), num_items, block_size, like=contexts)

  # Blocks may overlap (the shifted last block); rows of items counted in an
  # earlier block carry zero weight, so adding the blocks up is exact.
  def add_block(acc, args):
    grad_block, first = args
    current = jax.lax.dynamic_slice_in_dim(acc, first, size, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + grad_block, first, axis=0), None

  if num_blocks * size == num_items:
    grad_items = grad_blocks.reshape(num_items, dim)
  else:
    grad_items, _ = jax.lax.scan(add_block, varying_like(jnp.zeros_like(items), grad_blocks),
                                 (grad_blocks, firsts))
  return grad_contexts, grad_items, None, None


_blocked_logsumexp.defvjp(_blocked_logsumexp_fwd, _blocked_logsumexp_bwd)


def _with_offset(ids: jax.Array, offset: jax.Array | None) -> jax.Array:
  return ids if offset is None else ids + offset


def _blocked_top_k(contexts, items, k, excluded, words, block_size, id_offset=None,
                   num_valid=None):
  """Top-k of contexts @ items.T (+ hashed Gumbel noise of the items' ids +
  `id_offset` if `words`), by blocks with a running merge: (values `[batch,
  k]`, int32 ids `[batch, k]`), best first."""
  _, size = blocked.layout(items.shape[0], block_size)
  batch = contexts.shape[0]
  if words is not None:
    salt_a, salt_b = noise_lib.row_salts(words, jnp.arange(batch))

  def body(best, block):
    scores = _block_scores(contexts, items, block, size)
    if words is not None:
      uniform = noise_lib.hashed_uniform(salt_a, salt_b, _with_offset(block.ids, id_offset))
      scores = scores - jnp.log(-jnp.log(uniform))
    scores = jnp.where(_block_keep(excluded, batch, block, size, num_valid), scores, -jnp.inf)
    return blocked.merge_top_k(*best, scores, block.ids, k), None

  best, _ = blocked.scan(body, blocked.empty_top_k(batch, k, contexts.dtype),
                         items.shape[0], block_size, like=contexts)
  return best
