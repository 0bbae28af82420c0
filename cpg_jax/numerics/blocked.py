"""Passes over the item axis in blocks: the one home of the blocked scan.

A catalogue of N items is visited as `ceil(N / block)` blocks of `block`
items (`block = min(block_size, N)`). Every block has the same static shape:
the last one is shifted back to end at item N - 1 instead of being padded
(no padded copy of an item table is ever made), and the items it shares with
the previous block are marked stale (`Block.fresh` is False for them) so that
no item is counted twice.

Two running reductions are built on it:

- a running top-k: each block's own top-k is merged into the best k seen so
  far (`merge_top_k`); earlier blocks hold lower item ids and come first in
  the merge, so ties go to the lower id, exactly as `lax.top_k` on the dense
  row;
- an online log-sum-exp: a running max and a sum rescaled to it
  (`lse_init`, `lse_update`, `lse_value`), finite for rows whose every item
  is masked (their value is -inf).

Users: the item-blocked score table (`numerics.scores`), the synthetic
environment's optimal-items pass and the plain-JAX reference of the fused
kernel (`kernels/`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from cpg_jax.numerics import sharding


class Block(NamedTuple):
  """Where one block of the scan lies.

  Attributes:
    start: int32 `[]`, the first item this block is responsible for.
    first: int32 `[]`, the first item it reads (`<= start` for the shifted
      last block).
    ids: int32 `[block]`, the global ids of the items it reads.
    fresh: bool `[block]`, False for items already counted by the previous
      block.
  """

  start: jax.Array
  first: jax.Array
  ids: jax.Array
  fresh: jax.Array


def layout(num_items: int, block_size: int) -> tuple[int, int]:
  """(number of blocks, items per block) for a catalogue of `num_items`."""
  block = min(block_size, num_items)
  return -(-num_items // block), block


def block_at(index: jax.Array, num_items: int, block: int) -> Block:
  """The `index`-th block (a traced int) of a catalogue of `num_items`."""
  start = index * block
  # Shifted back to end at the table's end; its items before `start` belong
  # to the previous block.
  first = jnp.minimum(start, num_items - block)
  ids = (first + jnp.arange(block)).astype(jnp.int32)
  return Block(start=start, first=first, ids=ids, fresh=ids >= start)


def rows(table: jax.Array, block: Block, size: int) -> jax.Array:
  """The `size` rows of `table` `[items, ...]` that `block` reads."""
  return jax.lax.dynamic_slice_in_dim(table, block.first, size, axis=0)


def scan(body: Callable, init, num_items: int, block_size: int, like: jax.Array | None = None):
  """`lax.scan` of `body(carry, block) -> (carry, output)` over all blocks.

  `like`: an array the body's carry values derive from; inside `shard_map`
  the initial carry is marked as varying over the same mesh axes.
  Returns (final carry, stacked outputs), as `lax.scan` does.
  """
  num_blocks, block = layout(num_items, block_size)
  if like is not None:
    init = sharding.varying_like(init, like)
  return jax.lax.scan(lambda carry, j: body(carry, block_at(j, num_items, block)),
                      init, jnp.arange(num_blocks))


def empty_top_k(batch: int, k: int, dtype) -> tuple[jax.Array, jax.Array]:
  """The running top-k before the first block: values -inf, ids -1."""
  return jnp.full((batch, k), -jnp.inf, dtype), jnp.full((batch, k), -1, jnp.int32)


def merge_top_k(best_values: jax.Array, best_ids: jax.Array, values: jax.Array,
                ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Merges one block into the running top-k of each row.

  Args:
    best_values, best_ids: the running top-k, `[batch, k]` (ids int32).
    values: `[batch, block]`, the block's values (-inf for masked items).
    ids: int32 `[block]`, their global ids (all above the running ids).
    k: static.
  Returns:
    The new running (values, ids), `[batch, k]`, best first.
  """
  block_values, local = jax.lax.top_k(values, min(k, values.shape[1]))
  # The running entries come first: among equal values the lower id wins.
  merged_values = jnp.concatenate([best_values, block_values], axis=1)
  merged_ids = jnp.concatenate([best_ids, ids[local]], axis=1)
  top_values, where = jax.lax.top_k(merged_values, k)
  return top_values, jnp.take_along_axis(merged_ids, where, axis=1)


def lse_init(batch: int, dtype) -> tuple[jax.Array, jax.Array]:
  """The online log-sum-exp state before the first block: (max, sum)."""
  return jnp.full((batch,), -jnp.inf, dtype), jnp.zeros((batch,), dtype)


def lse_update(state: tuple[jax.Array, jax.Array], values: jax.Array,
               keep: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Adds the kept entries of `values` `[batch, block]` to the running LSE."""
  running_max, running_sum = state
  block_max = jnp.max(jnp.where(keep, values, -jnp.inf), axis=1)
  new_max = jnp.maximum(running_max, block_max)
  safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  rescale = jnp.where(jnp.isfinite(running_max), jnp.exp(running_max - safe_max), 0.0)
  block_sum = jnp.sum(jnp.where(keep, jnp.exp(values - safe_max[:, None]), 0.0), axis=1)
  return new_max, running_sum * rescale + block_sum


def lse_value(state: tuple[jax.Array, jax.Array]) -> jax.Array:
  """log(sum) of the running state, `[batch]`; -inf where nothing was kept."""
  running_max, running_sum = state
  return jnp.where(running_sum > 0, running_max + jnp.log(running_sum), -jnp.inf)
