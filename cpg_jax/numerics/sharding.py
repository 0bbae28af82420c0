"""The item axis cut into shards across devices: the collectives it needs.

Inside a `jax.shard_map` over a mesh with an item axis of D devices, each
device holds `local_size = ceil(N / D)` consecutive rows of every per-item
table: shard s holds the global items s * local_size .. (s + 1) * local_size - 1,
and rows past N (the last shards' padding) are not items. `ItemShards` turns
local results into global ones:

  gather_rows     rows of global ids, each from the shard that owns it
                  (a masked local gather, summed over the item axis)
  merge_top_k     the global top-k from every shard's local top-k (every
                  element of the global top-k is in its own shard's list);
                  shards are concatenated in id order, so ties still go to
                  the lower id
  merge_logsumexp the log-sum-exp over all items from the shards' ones
                  (max under stop_gradient, then a sum)
  all_true        a flag that holds on every shard

Outside a shard_map (`ItemShards.count == 1` is never built; no sharding is
`None`), nothing here runs. The noise of an item stays a pure function of its
global id (`numerics.noise`), so results do not depend on D.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


def varying_like(tree, like: jax.Array):
  """`tree` marked as varying over every manual mesh axis `like` varies over.

  Inside `shard_map`, a scan carry that starts as a constant must have the
  same type as the values the body puts in it; outside, this is the identity.
  """
  axes = set(jax.typeof(like).mat.varying)
  if not axes:
    return tree

  def one(x):  # Only the axes x does not vary over yet (pcast refuses the others).
    missing = tuple(sorted(axes - set(jax.typeof(x).mat.varying)))
    return lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(one, tree)


@dataclasses.dataclass(frozen=True)
class ItemShards:
  """How the catalogue is cut over the mesh axis `axis` (static, hashable).

  Attributes:
    axis: the mesh axis name of the item shards.
    count: D, the number of item shards.
    num_items: N, the global catalogue size.
  """

  axis: str
  count: int
  num_items: int

  @property
  def local_size(self) -> int:
    """Rows per shard, ceil(N / D)."""
    return -(-self.num_items // self.count)

  @property
  def padded_size(self) -> int:
    """D * local_size: the rows of a padded per-item table."""
    return self.count * self.local_size

  def offset(self) -> jax.Array:
    """The global id of this shard's first row (traced int32)."""
    return (lax.axis_index(self.axis) * self.local_size).astype(jnp.int32)

  def global_ids(self) -> jax.Array:
    """int32 `[local_size]`: the global id of each local row."""
    return self.offset() + jnp.arange(self.local_size, dtype=jnp.int32)

  def to_local(self, ids: jax.Array) -> jax.Array:
    """Global ids -> local row indices (outside [0, local_size) if not ours)."""
    return ids - self.offset()

  def gather_rows(self, table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows of global `ids` `[...]` of the sharded `table` `[local_size, ...]`:
    `[..., ...]`, each row from its owner; differentiable in `table`."""
    local = self.to_local(ids)
    mine = (local >= 0) & (local < self.local_size)
    rows = table[jnp.clip(local, 0, self.local_size - 1)]
    mask = mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim))
    return lax.psum(jnp.where(mask, rows, 0), self.axis)

  def gather_columns(self, table: jax.Array, rows: jax.Array, ids: jax.Array) -> jax.Array:
    """`table[rows[:, None], ids]` for a table sharded on its columns
    `[R, local_size]`: rows int `[B]`, global ids `[B, n]` -> `[B, n]`."""
    local = self.to_local(ids)
    mine = (local >= 0) & (local < self.local_size)
    values = table[rows[:, None], jnp.clip(local, 0, self.local_size - 1)]
    return lax.psum(jnp.where(mine, values, 0), self.axis)

  def merge_top_k(self, values: jax.Array, ids: jax.Array, k: int
                  ) -> tuple[jax.Array, jax.Array]:
    """The global top-k `[B, k]` (values, global ids) of the shards' local
    lists (values, global ids) `[B, k_local]`, best first, ties to the lower id."""
    all_values = lax.all_gather(values, self.axis, axis=1, tiled=True, to="invarying")
    all_ids = lax.all_gather(ids, self.axis, axis=1, tiled=True, to="invarying")
    top_values, where = lax.top_k(all_values, k)
    return top_values, jnp.take_along_axis(all_ids, where, axis=1)

  def merge_logsumexp(self, lse: jax.Array) -> jax.Array:
    """log(sum over shards of exp(lse)): the shards' log-sum-exps combined.
    -inf where every shard's is -inf; differentiable."""
    # pmax has no derivative rule: the shift is a constant.
    shift = lax.pmax(lax.stop_gradient(lse), self.axis)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return shift + jnp.log(lax.psum(jnp.exp(lse - shift), self.axis))

  def all_true(self, flag: jax.Array) -> jax.Array:
    """True where `flag` holds on every shard."""
    return lax.pmin(flag.astype(jnp.int32), self.axis) > 0
