"""Fused two-tower scoring, Gumbel-top-k and log-sum-exp over a big catalogue.

For B contexts U `[B, d]` and N items V `[N, d]` the scores are
s = U V^T `[B, N]`. Sampling K candidates with Gumbel-top-k needs the top-k of
s + g (g hashed Gumbel noise, `cpg_jax.numerics.noise`), and the Plackett-Luce
normaliser needs logsumexp(s) over all N items. Written naively both
materialise `[B, N]` (5 GB for B = 128, N = 10^7). Everything here streams over
item blocks instead and keeps only `[B, k]` running state:

* `fused_topk_lse_reference`: plain JAX, a `lax.scan` over item blocks; per
  block `lax.top_k` of (running top-k ++ block) and an online log-sum-exp.
* `fused_topk_lse_pallas`: a Pallas kernel doing the same per tile, with the
  noise regenerated in-kernel from (row salts, global item ids).
* `fused_topk_lse`: picks one of the two by backend.

Ties are broken by the lower item id, as `lax.top_k` does on the dense scores.
Noise is on when `words` (uint32 `[2]`, `noise.seed_words(key)`) is given; it
depends only on (words, row id, global item id), so every path draws the same
candidates as the dense `lax.top_k(U @ V.T + noise.hashed_gumbel(...), k)`.

Pallas kernel
-------------
The grid is (row blocks, item splits[, item blocks]). Each program owns
`block_rows` context rows and one contiguous split of the catalogue, and keeps
for them a running log-sum-exp (max m, rescaled sum l) and a running top-k as
an *unsorted* set of `k_pad = next_pow2(k)` slots (key, id). Per tile:

1. s = U_blk V_blk^T `[block_rows, block_items]` (f32, `precision=HIGHEST`);
   padded items (id >= N) are masked;
2. m, l updated with s (no noise);
3. s += hashed Gumbel noise of the tile (if `words`), then s is mapped to
   int32 order keys (the float bits, magnitude flipped for negatives), which
   order floats exactly as `lax.top_k` does, -0.0 below +0.0 included;
4. merge: repeatedly take the tile's best (key, lowest id) and, in every row
   where it beats the set's worst (lowest key, highest id), overwrite that
   slot and mask the element out of the tile. The loop (`lax.while_loop`)
   stops as soon as no row of the block has a tile element beating its worst.

Each round costs O(block_items + k_pad) per row; the number of rounds is the
largest number of tile elements that enter the top-k in any row of the block
(at most k_pad). The first tile of a split costs the full
O(k_pad (block_items + k_pad)); later tiles, whose elements rarely beat the
k-th best seen so far, cost far less. Past k ~ 128 the merge dominates the
matmul and the hash: use the reference path (`lax.top_k` is O(tile log k)).

The per-split sets are combined outside the kernel by one lexicographic sort
of the `[B, splits * k_pad]` candidates on (-key, id) and the per-split
(m, l) pairs by the usual log-sum-exp rescaling; both are tiny next to the
`[B, N]` work.

Two schedules of the item loop:

* "grid": item blocks are the last, sequential ("arbitrary") grid axis and
  the running state lives in the output blocks, which stay resident while
  that axis advances (the TPU / Mosaic pattern; V is streamed block by block
  by the BlockSpec pipeline).
* "loop": the grid is (row blocks, splits) only and each program walks its
  item blocks with a `fori_loop`, slicing V from a whole-array ref (the
  Triton pattern, as in Pallas's flash attention: Triton runs all grid
  programs concurrently, so a grid axis can not carry state). Splitting the
  catalogue gives the GPU enough programs (B = 128 is only a few row blocks).

Padding: N to a multiple of `block_items` (and of the split size), B to a
multiple of `block_rows`, d to a power of two >= 16 (Triton needs power-of-two
tensor sizes and dot operands >= 16; zero columns leave the dot products
unchanged), k to `k_pad`. Padding V copies it; keeping N a multiple of
`block_items` and d = 16, 32, ... avoids that copy.

Assumptions: no NaN scores (their order is not specified here); the online
LSE assumes some score in each row is finite; N + k_pad < 2^31.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from cpg_jax.numerics import blocked
from cpg_jax.numerics import noise

# Id of an empty running slot: above every item id, so it loses every tie.
_EMPTY_ID = 2**31 - 1
# Order key of padded items, taken tile entries and empty slots: below the key
# of every float but a NaN with all bits set.
_NO_KEY = -2**31
_DOT_DIMS = (((1,), (1,)), ((), ()))  # U_blk [R, d] . V_blk [T, d] -> [R, T].


def _check_inputs(U, V, k, words):
  if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[1]:
    raise ValueError(f"need U [B, d] and V [N, d], got {U.shape} and {V.shape}")
  if not 1 <= k <= V.shape[0]:
    raise ValueError(f"need 1 <= k <= N = {V.shape[0]}, got k={k}")
  if words is not None and jnp.shape(words) != (2,):
    raise ValueError(f"words must be uint32 [2], got shape {jnp.shape(words)}")


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _order_key(x):
  """int32 keys ordered like `lax.top_k` orders float32 `x` (-0.0 < +0.0).

  The float's bits with the magnitude bits flipped for negatives: monotone,
  and distinct for -0.0 and +0.0, which `==` and `max` on floats are not.
  Applying it to the keys (as float bits) inverts it.
  """
  bits = lax.bitcast_convert_type(x, jnp.int32)
  return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _from_order_key(key):
  return lax.bitcast_convert_type(key ^ ((key >> 31) & 0x7FFFFFFF), jnp.float32)


def _tile_gumbel(salt_a, salt_b, item_ids):
  """Gumbel noise `[R, T]` for rows with salts `[R, 1]` and ids int32 `[1, T]`.

  Bit-identical to `noise.hashed_gumbel` (same hash and constants); written
  with 2-D operands and a signed int -> float conversion (exact: the value is
  below 2^24) so that it lowers inside a kernel.
  """
  h = item_ids.astype(jnp.uint32) * jnp.uint32(noise.ITEM_MULTIPLIER)
  h = noise.fmix32(noise.fmix32(h ^ salt_a) ^ salt_b)
  u = ((h >> 8).astype(jnp.int32).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
  return -jnp.log(-jnp.log(u))


def fused_topk_lse_dense(U, V, k, words=None):
  """Brute force over the full `[B, N]` scores (tests and benchmarks only).

  Same outputs as `fused_topk_lse_reference`, built from the dense matrix.
  """
  s = lax.dot_general(U, V, _DOT_DIMS, precision=lax.Precision.HIGHEST)
  perturbed = s
  if words is not None:
    perturbed = s + noise.hashed_gumbel(words, jnp.arange(U.shape[0]), jnp.arange(V.shape[0]))
  values, ids = lax.top_k(perturbed, k)
  return values, ids, jax.nn.logsumexp(s, axis=1)


# ----------------------------------------------------------------------------
# Reference: lax.scan over item blocks.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k", "block_items", "with_lse"))
def fused_topk_lse_reference(U, V, k, words=None, block_items=8192, with_lse=True):
  """Top-k of U V^T (+ hashed Gumbel noise) and logsumexp of U V^T, blockwise.

  The item blocks, the running top-k merge and the online log-sum-exp are
  those of `cpg_jax.numerics.blocked`, shared with the item-blocked score
  table.

  Args:
    U: float32 `[B, d]`, context embeddings.
    V: float32 `[N, d]`, item embeddings.
    k: number of items to return, 1 <= k <= N.
    words: optional uint32 `[2]` hash seed (`noise.seed_words(key)`); when
      given, the noise of row r and item i is `noise.hashed_gumbel` of (r, i).
    block_items: items scored per scan step; peak memory is `[B, block_items]`.
    with_lse: also compute the log-sum-exp (False skips its exponentials and
      returns None in its place).
  Returns:
    values: float32 `[B, k]`, the k largest perturbed scores, descending.
    ids: int32 `[B, k]`, their item ids (ties: lower id first).
    lse: float32 `[B]`, logsumexp over all N items of the noiseless scores
      (None if not `with_lse`).
  """
  _check_inputs(U, V, k, words)
  U = U.astype(jnp.float32)
  V = V.astype(jnp.float32)
  batch = U.shape[0]
  num_items = V.shape[0]
  _, size = blocked.layout(num_items, block_items)
  salts = None if words is None else noise.row_salts(words, jnp.arange(batch))

  def step(carry, block):
    top, lse_state = carry
    s = lax.dot_general(U, blocked.rows(V, block, size), _DOT_DIMS,
                        precision=lax.Precision.HIGHEST)
    keep = jnp.broadcast_to(block.fresh[None, :], s.shape)
    if with_lse:
      lse_state = blocked.lse_update(lse_state, s, keep)
    if salts is not None:
      s = s + -jnp.log(-jnp.log(noise.hashed_uniform(*salts, block.ids)))
    s = jnp.where(keep, s, -jnp.inf)
    return (blocked.merge_top_k(*top, s, block.ids, k), lse_state), None

  init = (blocked.empty_top_k(batch, k, jnp.float32), blocked.lse_init(batch, jnp.float32))
  ((top_v, top_i), lse_state), _ = blocked.scan(step, init, num_items, block_items)
  return top_v, top_i, blocked.lse_value(lse_state) if with_lse else None


# ----------------------------------------------------------------------------
# Pallas kernel.
# ----------------------------------------------------------------------------


def _merge_tile(tile_k, item_ids, top_k, top_i):
  """Merges a tile into the unsorted running top-k of each row.

  Args:
    tile_k: int32 `[R, T]`, order keys of the perturbed scores, _NO_KEY for
      padded items.
    item_ids: int32 `[1, T]`, global ids of the tile's items.
    top_k, top_i: int32 `[R, K]`, keys and ids of the running set (empty
      slots: _NO_KEY with distinct ids >= _EMPTY_ID - K).
  Returns:
    The updated (top_k, top_i).
  """

  def challenge(tile_k, top_k, top_i):
    # Best of the tile: highest key, then lowest id.
    best_k = jnp.max(tile_k, axis=1, keepdims=True)
    best_i = jnp.min(jnp.where(tile_k == best_k, item_ids, _EMPTY_ID),
                     axis=1, keepdims=True)
    # Worst of the set: lowest key, then highest id (ids in the set are
    # distinct, so it is one slot).
    worst_k = jnp.min(top_k, axis=1, keepdims=True)
    worst_i = jnp.max(jnp.where(top_k == worst_k, top_i, -1),
                      axis=1, keepdims=True)
    # A _NO_KEY tile entry is padding or already taken: never a candidate.
    beats = (best_k > worst_k) | (
        (best_k == worst_k) & (best_i < worst_i) & (best_k > _NO_KEY))
    return best_k, best_i, worst_i, beats

  def cond(carry):
    return jnp.max(carry[-1].astype(jnp.int32)) > 0

  def body(carry):
    tile_k, top_k, top_i, best_k, best_i, worst_i, beats = carry
    evict = beats & (top_i == worst_i)
    top_k = jnp.where(evict, best_k, top_k)
    top_i = jnp.where(evict, best_i, top_i)
    tile_k = jnp.where(beats & (item_ids == best_i), _NO_KEY, tile_k)
    return (tile_k, top_k, top_i, *challenge(tile_k, top_k, top_i))

  carry = (tile_k, top_k, top_i, *challenge(tile_k, top_k, top_i))
  _, top_k, top_i, *_ = lax.while_loop(cond, body, carry)
  return top_k, top_i


def _tile_update(u, v, start, num_items, salts, state, precision, with_lse):
  """One item tile: scores, online LSE (if `with_lse`), noise, top-k merge.

  Args:
    u: float32 `[R, D]`; v: float32 `[T, D]`; start: first item id of the
      tile (int32 scalar); num_items: N (static); salts: None or the row
      salts (a, b), uint32 `[R, 1]` each; state: (order keys top_k and ids
      top_i, int32 `[R, K]`; m, l float32 `[R, 1]`).
  """
  top_k, top_i, m, l = state
  block = v.shape[0]
  item_ids = start + lax.broadcasted_iota(jnp.int32, (1, block), 1)
  s = lax.dot_general(u, v, _DOT_DIMS, precision=precision,
                      preferred_element_type=jnp.float32)
  valid = item_ids < num_items
  s = jnp.where(valid, s, -jnp.inf)
  if with_lse:
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    # m_new is -inf only for a tile of padding in a split with no item yet.
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    l = l * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(s - m_safe), axis=1, keepdims=True)
    m = m_new
  if salts is not None:
    s = s + _tile_gumbel(*salts, item_ids)
  tile_k = jnp.where(valid, _order_key(s), _NO_KEY)
  top_k, top_i = _merge_tile(tile_k, item_ids, top_k, top_i)
  return top_k, top_i, m, l


def _empty_state(rows, k_pad):
  return (jnp.full((rows, k_pad), _NO_KEY, jnp.int32),
          _EMPTY_ID - lax.broadcasted_iota(jnp.int32, (rows, k_pad), 1),
          jnp.full((rows, 1), -jnp.inf, jnp.float32),
          jnp.zeros((rows, 1), jnp.float32))


def _grid_kernel(*refs, num_items, block_items, blocks_per_split, noisy,
                 precision, with_lse):
  """Schedule "grid": one item tile per program; state in the output refs."""
  u_ref, v_ref, *refs = refs
  salt_refs, out_refs = (refs[:2], refs[2:]) if noisy else ((), refs)
  split, step = pl.program_id(1), pl.program_id(2)
  start = (split * blocks_per_split + step) * block_items

  @pl.when(step == 0)
  def _init():
    for ref, value in zip(out_refs, _empty_state(*out_refs[0].shape)):
      ref[...] = value

  # Tiles wholly past N (the tail of the last split) are skipped.
  @pl.when(start < num_items)
  def _update():
    salts = tuple(ref[...] for ref in salt_refs) or None
    state = tuple(ref[...] for ref in out_refs)
    state = _tile_update(u_ref[...], v_ref[...], start, num_items, salts,
                         state, precision, with_lse)
    for ref, value in zip(out_refs, state):
      ref[...] = value


def _loop_kernel(*refs, num_items, block_items, blocks_per_split, noisy,
                 precision, with_lse):
  """Schedule "loop": one program per (row block, split), looping over tiles."""
  u_ref, v_ref, *refs = refs
  salt_refs, out_refs = (refs[:2], refs[2:]) if noisy else ((), refs)
  salts = tuple(ref[...] for ref in salt_refs) or None
  first = pl.program_id(1) * blocks_per_split
  count = jnp.minimum(blocks_per_split, _cdiv(num_items, block_items) - first)
  u = u_ref[...]

  def body(t, state):
    start = pl.multiple_of((first + t) * block_items, block_items)
    v = v_ref[pl.ds(start, block_items), :]
    return _tile_update(u, v, start, num_items, salts, state, precision, with_lse)

  state = lax.fori_loop(0, count, body, _empty_state(*out_refs[0].shape))
  for ref, value in zip(out_refs, state):
    ref[...] = value


def _platform() -> str:
  return jax.default_backend()


def _default_blocks(platform: str, interpret: bool) -> tuple[int, int]:
  """(block_rows, block_items) defaults; GPU sizes keep a tile in registers."""
  if interpret or platform == "cpu":
    return 8, 512
  if platform == "tpu":
    return 128, 2048
  return 16, 256


def _default_splits(platform, num_row_blocks, num_blocks, interpret) -> int:
  """Item splits: on GPU enough programs to fill the SMs (~2 per SM)."""
  if interpret or platform not in ("gpu", "cuda", "rocm"):
    return 1
  cores = getattr(jax.devices()[0], "core_count", None) or 132
  return max(1, min(num_blocks, _cdiv(2 * cores, num_row_blocks)))


def _compiler_params(platform: str, schedule: str, interpret: bool):
  if interpret:
    return None
  if platform == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    semantics = ("parallel", "parallel", "arbitrary")[:3 if schedule == "grid" else 2]
    return pltpu.CompilerParams(dimension_semantics=semantics)
  # Name Triton explicitly: a Mosaic GPU kernel would need another structure.
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=4, num_stages=2)


class _Layout(NamedTuple):
  """Tile sizes, paddings and the item splits of one kernel call (static)."""

  num_items: int
  block_rows: int
  block_items: int
  k_pad: int
  dim_pad: int
  batch_pad: int
  num_row_blocks: int
  splits: int
  blocks_per_split: int
  items_pad: int


def _layout(platform, interpret, batch, num_items, dim, k, block_rows, block_items,
            num_splits) -> _Layout:
  default_rows, default_items = _default_blocks(platform, interpret)
  if block_rows is None:  # No more rows than the (rounded-up) batch.
    on_gpu = platform in ("gpu", "cuda", "rocm") and not interpret
    min_rows = 16 if on_gpu else 8  # A Triton dot needs M >= 16.
    block_rows = min(default_rows, max(min_rows, _next_pow2(batch)))
  block_items = min(block_items or default_items, _next_pow2(num_items))
  batch_pad = _cdiv(batch, block_rows) * block_rows
  num_row_blocks = batch_pad // block_rows
  num_blocks = _cdiv(num_items, block_items)
  splits = num_splits or _default_splits(platform, num_row_blocks, num_blocks, interpret)
  blocks_per_split = _cdiv(num_blocks, min(splits, num_blocks))
  splits = _cdiv(num_blocks, blocks_per_split)  # No split without real items.
  return _Layout(num_items=num_items, block_rows=block_rows, block_items=block_items,
                 k_pad=_next_pow2(k), dim_pad=max(16, _next_pow2(dim)), batch_pad=batch_pad,
                 num_row_blocks=num_row_blocks, splits=splits,
                 blocks_per_split=blocks_per_split,
                 items_pad=splits * blocks_per_split * block_items)


def _program(layout: _Layout, schedule: str, noisy: bool, precision, with_lse):
  """The kernel, its grid and its block specs for `schedule`."""
  rows, items, per_split = layout.block_rows, layout.block_items, layout.blocks_per_split
  kernel_args = dict(num_items=layout.num_items, block_items=items,
                     blocks_per_split=per_split, noisy=noisy, precision=precision,
                     with_lse=with_lse)
  if schedule == "grid":
    kernel = functools.partial(_grid_kernel, **kernel_args)
    grid = (layout.num_row_blocks, layout.splits, per_split)
    u_spec = pl.BlockSpec((rows, layout.dim_pad), lambda i, s, j: (i, 0))
    v_spec = pl.BlockSpec((items, layout.dim_pad), lambda i, s, j: (s * per_split + j, 0))
    row_spec = pl.BlockSpec((rows, 1), lambda i, s, j: (i, 0))
    top_spec = pl.BlockSpec((None, rows, layout.k_pad), lambda i, s, j: (s, i, 0))
    lse_spec = pl.BlockSpec((None, rows, 1), lambda i, s, j: (s, i, 0))
  else:
    kernel = functools.partial(_loop_kernel, **kernel_args)
    grid = (layout.num_row_blocks, layout.splits)
    u_spec = pl.BlockSpec((rows, layout.dim_pad), lambda i, s: (i, 0))
    v_spec = pl.BlockSpec((layout.items_pad, layout.dim_pad), lambda i, s: (0, 0))
    row_spec = pl.BlockSpec((rows, 1), lambda i, s: (i, 0))
    top_spec = pl.BlockSpec((None, rows, layout.k_pad), lambda i, s: (s, i, 0))
    lse_spec = pl.BlockSpec((None, rows, 1), lambda i, s: (s, i, 0))
  in_specs = [u_spec, v_spec] + ([row_spec, row_spec] if noisy else [])
  return kernel, grid, in_specs, (top_spec, top_spec, lse_spec, lse_spec)


@functools.partial(
    jax.jit,
    static_argnames=("k", "block_items", "block_rows", "interpret", "schedule",
                     "num_splits", "precision", "with_lse"))
def fused_topk_lse_pallas(U, V, k, words=None, block_items=None, block_rows=None,
                          interpret=False, schedule="auto", num_splits=None,
                          precision=lax.Precision.HIGHEST, with_lse=True):
  """The Pallas kernel; same contract as `fused_topk_lse_reference`.

  Args:
    U, V, k, words: as in `fused_topk_lse_reference`.
    block_items: items per tile (a power of two on GPU); default by backend.
    block_rows: context rows per program (a power of two >= 16 on GPU);
      default by backend.
    interpret: run the kernel with the Pallas interpreter (required on CPU).
    schedule: "grid" (item tiles as a sequential grid axis: TPU, interpret),
      "loop" (in-kernel loop over tiles: GPU/Triton) or "auto" (by backend).
    num_splits: contiguous item ranges handled by separate programs and
      combined afterwards; default 1, or ~2 programs per SM on GPU.
    precision: of the in-kernel dot; HIGHEST keeps float32 on GPU (the
      default would be TF32) so the kernel agrees with the reference.
    with_lse: as in `fused_topk_lse_reference` (False skips the in-kernel
      log-sum-exp and returns None in its place).
  Returns:
    (values float32 `[B, k]`, ids int32 `[B, k]`, lse float32 `[B]` or None).
  """
  _check_inputs(U, V, k, words)
  platform = _platform()
  if platform == "cpu" and not interpret:
    raise ValueError("Pallas kernels only run with interpret=True on CPU")
  if schedule == "auto":
    schedule = "grid" if interpret or platform == "tpu" else "loop"
  if schedule not in ("grid", "loop"):
    raise ValueError(f"schedule must be 'auto', 'grid' or 'loop', got {schedule!r}")
  if schedule == "grid" and platform in ("gpu", "cuda", "rocm") and not interpret:
    raise ValueError("schedule='grid' carries state across grid steps, which "
                     "Triton runs concurrently; use schedule='loop' on GPU")

  batch, dim = U.shape
  layout = _layout(platform, interpret, batch, V.shape[0], dim, k, block_rows, block_items,
                   num_splits)
  U = jnp.pad(U.astype(jnp.float32),
              ((0, layout.batch_pad - batch), (0, layout.dim_pad - dim)))
  V = jnp.pad(V.astype(jnp.float32),
              ((0, layout.items_pad - V.shape[0]), (0, layout.dim_pad - dim)))
  noisy = words is not None
  inputs = [U, V]
  if noisy:
    salt_a, salt_b = noise.row_salts(words, jnp.arange(layout.batch_pad))
    inputs += [salt_a[:, None], salt_b[:, None]]
  kernel, grid, in_specs, out_specs = _program(layout, schedule, noisy, precision, with_lse)
  out_shape = (jax.ShapeDtypeStruct((layout.splits, layout.batch_pad, layout.k_pad), jnp.int32),
               jax.ShapeDtypeStruct((layout.splits, layout.batch_pad, layout.k_pad), jnp.int32),
               jax.ShapeDtypeStruct((layout.splits, layout.batch_pad, 1), jnp.float32),
               jax.ShapeDtypeStruct((layout.splits, layout.batch_pad, 1), jnp.float32))
  top_k, top_i, m, l = pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      interpret=interpret,
      compiler_params=_compiler_params(platform, schedule, interpret),
      name="fused_topk_lse",
  )(*inputs)

  # Combine the splits: sort all candidates on (key descending, id
  # ascending), which also orders each split's unsorted set. ~key is a
  # decreasing map of the key that can not overflow.
  width = layout.splits * layout.k_pad
  top_k = top_k[:, :batch].transpose(1, 0, 2).reshape(batch, width)
  top_i = top_i[:, :batch].transpose(1, 0, 2).reshape(batch, width)
  not_k, top_i = lax.sort((~top_k, top_i), dimension=1, num_keys=2)
  if not with_lse:
    return _from_order_key(~not_k[:, :k]), top_i[:, :k], None
  m, l = m[:, :batch, 0], l[:, :batch, 0]
  m_all = jnp.max(m, axis=0)
  lse = m_all + jnp.log(jnp.sum(l * jnp.exp(m - m_all), axis=0))
  return _from_order_key(~not_k[:, :k]), top_i[:, :k], lse


# ----------------------------------------------------------------------------
# Dispatch.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FusedTopK:
  """The kernel's top-k ids as the fused top-k of an item-blocked score table
  (`cpg_jax.numerics.scores.BlockedScores.fused_top_k`); no log-sum-exp.

  Attributes:
    implementation: "pallas" or "auto" (see `fused_topk_lse`).
  """

  implementation: str = "auto"

  def __call__(self, U, V, k, words, block_items):
    """(values float32 `[B, k]`, ids int32 `[B, k]`) of the top-k of U V^T
    (+ noise if `words`)."""
    values, ids, _ = fused_topk_lse(U, V, k, words, implementation=self.implementation,
                                    block_items=block_items, with_lse=False)
    return values, ids


def fused_topk_lse(U, V, k, words=None, *, implementation="auto",
                   block_items=None, block_rows=None, with_lse=True, **kernel_kwargs):
  """Top-k (+ hashed Gumbel noise) and logsumexp of U V^T, never `[B, N]`.

  Args:
    U: float32 `[B, d]`; V: float32 `[N, d]`; k: 1 <= k <= N; words:
      optional uint32 `[2]` noise seed (see `fused_topk_lse_reference`).
    implementation: "pallas" (the kernel; interpreted on CPU), "xla" (the
      `lax.scan` reference) or "auto" (pallas on GPU/TPU, xla on CPU).
    block_items, block_rows: tile sizes (block_rows is ignored by "xla");
      None picks a default for the path and backend.
    with_lse: also return the log-sum-exp (False: None in its place, and
      neither path computes it).
    **kernel_kwargs: extra options of `fused_topk_lse_pallas` (schedule,
      num_splits, precision).
  Returns:
    (values float32 `[B, k]` descending, ids int32 `[B, k]`, lse float32 `[B]`
    or None).
  """
  platform = _platform()
  if implementation == "auto":
    implementation = "xla" if platform == "cpu" else "pallas"
  if implementation == "xla":
    return fused_topk_lse_reference(U, V, k, words, block_items=block_items or 8192,
                                    with_lse=with_lse)
  if implementation == "pallas":
    return fused_topk_lse_pallas(U, V, k, words, block_items=block_items,
                                 block_rows=block_rows,
                                 interpret=platform == "cpu", with_lse=with_lse,
                                 **kernel_kwargs)
  raise ValueError(
      f"implementation must be 'auto', 'pallas' or 'xla', got {implementation!r}")
