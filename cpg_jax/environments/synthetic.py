"""The synthetic environment of the published experiments (docs/method.md).

A fixed world built once from one seed:

  x_u ~ U[-1, 1]^d, e_a ~ U[-1, 1]^d          (rows L2-normalised)
  M0, Mz: N(0, 1) entries                      (rows L2-normalised)
  c_x, c_a ~ N(0, I_d),  W: N(0, 1) entries
  eta(x, a) = sqrt(sigmoid(<x, c_x> + 3) * sigmoid(<e_a, c_a> + 3))
  q(x, a)   = reward_scale * x^T [(1 - eta) M0 + eta Mz] e_a
  r | x, a  ~ Normal(softplus(q) + 1, sigmoid(x^T W e_a + 1))   (mean, std)

Everything that depends on the context alone is precomputed at build time
(x M0, x Mz, x W and the context half of eta, which factorises), so q and the
reward of one (context, item) pair cost two or three O(d) dot products, and a
catalogue of millions of items is scored in item blocks without ever holding a
dense `[contexts, items]` matrix. The generator's own draws (x, e, M0, Mz,
W, c_x, c_a) are not kept in the environment (only the precomputed tables a
step reads are); `draw_components` returns them for tests and analysis.
"""

from __future__ import annotations

import math
import numbers

from typing import NamedTuple

import chex
from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cpg_jax.environments import base
from cpg_jax.numerics import blocked
from cpg_jax.numerics.sharding import ItemShards

# The contractions here are over d ~ 10, so exact float32 costs nothing, while
# the reduced-precision default of some accelerators (TF32, bf16 passes) would
# perturb q enough to reorder near-tied items in `optimal_items`.
_EXACT = lax.Precision.HIGHEST
_FLOAT_BYTES = 4
_MAX_ID = 2**31 - 1  # ids are int32


@struct.dataclass
class SyntheticEnvironment(base.Environment):
  """The published synthetic generator, as an immutable pytree.

  Build it with `make_synthetic_environment`; the constructor does no checks.

  Leaves (float32):
    item_vectors: `[items, dim]` e_a, unit rows.
    context_m0: `[contexts, dim]` x_u @ M0.
    context_mz: `[contexts, dim]` x_u @ Mz.
    context_w: `[contexts, dim]` x_u @ W.
    context_eta_root: `[contexts]` sqrt(sigmoid(<x_u, c_x> + 3)).
    item_eta_root: `[items]` sqrt(sigmoid(<e_a, c_a> + 3)); eta(u, a) is
      context_eta_root[u] * item_eta_root[a].

  Static fields:
    seed: the seed the world was drawn from (`draw_components` redraws it).
    num_contexts, num_items, dim: sizes.
    reward_scale: the factor in front of the bilinear form (10 in the paper).
    shared_key: True if the build reused PRNG keys the way the published
      generator does (x == e when the shapes agree, Mz == M0, c_x == c_a);
      False if every component had its own key.
    block_size: items per block when `optimal_items` scans the catalogue.
    dense_budget_bytes: the largest dense `[batch, items]` float32 matrix (in
      bytes) that `optimal_items` and `expected_score_all` may build.
    item_shards: None, or how the item leaves (`ITEM_AXES`) are cut over a
      mesh axis inside `shard_map` (`numerics.sharding`): then each device
      holds its own rows, and gathers and top-k lists combine the shards.
  """

  # The leaves indexed by item id, and the axis of each that is the item axis.
  ITEM_AXES = {'item_vectors': 0, 'item_eta_root': 0}

  item_vectors: jax.Array
  context_m0: jax.Array
  context_mz: jax.Array
  context_w: jax.Array
  context_eta_root: jax.Array
  item_eta_root: jax.Array
  seed: int = struct.field(pytree_node=False)
  num_contexts: int = struct.field(pytree_node=False)
  num_items: int = struct.field(pytree_node=False)
  dim: int = struct.field(pytree_node=False)
  reward_scale: float = struct.field(pytree_node=False)
  shared_key: bool = struct.field(pytree_node=False)
  block_size: int = struct.field(pytree_node=False)
  dense_budget_bytes: int = struct.field(pytree_node=False)
  item_shards: ItemShards | None = struct.field(pytree_node=False, default=None)

  def _item_rows(self, table: jax.Array, item_ids: jax.Array) -> jax.Array:
    """Rows of an item leaf for global ids, from their shards if cut."""
    if self.item_shards is None:
      return table[item_ids]
    return self.item_shards.gather_rows(table, item_ids)

  def sample_contexts(self, key: jax.Array, batch_size: int) -> jax.Array:
    """Draws context ids uniformly. Returns int32 `[batch]`."""
    return jax.random.randint(
        key, (batch_size,), 0, self.num_contexts, dtype=jnp.int32
    )

  def _check_pairs(self, context_ids: jax.Array, item_ids: jax.Array) -> None:
    chex.assert_rank(context_ids, 1)
    chex.assert_rank(item_ids, 2)
    chex.assert_type([context_ids, item_ids], int)
    chex.assert_axis_dimension(item_ids, 0, context_ids.shape[0])

  def _q(self, xm0, xmz, gx, e, ga, pattern: str) -> jax.Array:
    """q from per-context rows and item rows.

    Args:
      xm0, xmz: `[batch, dim]` x @ M0 and x @ Mz.
      gx: `[batch]` context half of eta.
      e: item vectors, `[batch, n, dim]` (pattern 'bd,bnd->bn') or `[n, dim]`
        (pattern 'bd,nd->bn').
      ga: item half of eta, `[batch, n]` or `[n]`.
      pattern: the einsum that pairs contexts with items.
    Returns:
      `[batch, n]`.
    """
    base_q = jnp.einsum(pattern, xm0, e, precision=_EXACT)
    latent_q = jnp.einsum(pattern, xmz, e, precision=_EXACT)
    eta = gx[:, None] * ga
    return self.reward_scale * ((1.0 - eta) * base_q + eta * latent_q)

  def expected_score(
      self, context_ids: jax.Array, item_ids: jax.Array
  ) -> jax.Array:
    """q(x_u, e_a) for each pair.

    Args:
      context_ids: int `[batch]`.
      item_ids: int `[batch, n]`.
    Returns:
      float32 `[batch, n]`. Differentiable in the environment's leaves (not
      that anything needs it).
    """
    self._check_pairs(context_ids, item_ids)
    return self._q(
        self.context_m0[context_ids],
        self.context_mz[context_ids],
        self.context_eta_root[context_ids],
        self._item_rows(self.item_vectors, item_ids),
        self._item_rows(self.item_eta_root, item_ids),
        'bd,bnd->bn',
    )

  def mean_reward(self, context_ids: jax.Array, item_ids: jax.Array) -> jax.Array:
    """E[r | x, a] = softplus(q) + 1 (> 1). Shapes as `expected_score`."""
    return jax.nn.softplus(self.expected_score(context_ids, item_ids)) + 1.0

  def reward_std(self, context_ids: jax.Array, item_ids: jax.Array) -> jax.Array:
    """The reward noise's standard deviation sigmoid(x^T W e_a + 1).

    Shapes as `expected_score`.
    """
    self._check_pairs(context_ids, item_ids)
    xwe = jnp.einsum(
        'bd,bnd->bn',
        self.context_w[context_ids],
        self._item_rows(self.item_vectors, item_ids),
        precision=_EXACT,
    )
    return jax.nn.sigmoid(xwe + 1.0)

  def sample_reward(
      self, key: jax.Array, context_ids: jax.Array, item_ids: jax.Array
  ) -> jax.Array:
    """r ~ Normal(softplus(q) + 1, sigmoid(x^T W e_a + 1)), one per pair.

    Args:
      key: PRNG key, consumed.
      context_ids: int `[batch]`.
      item_ids: int `[batch, n]`.
    Returns:
      float32 `[batch, n]`, independent draws. Not clipped: a draw can be
      below 0 (rarely; the mean is > 1 and the std < 1).
    """
    mean = self.mean_reward(context_ids, item_ids)
    std = self.reward_std(context_ids, item_ids)
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)

  def _check_dense(self, batch: int, what: str) -> None:
    need = batch * self.item_vectors.shape[0] * _FLOAT_BYTES
    if need > self.dense_budget_bytes:
      raise ValueError(
          f'{what} would build a dense [{batch}, {self.num_items}] float32 '
          f'matrix of {need} bytes, over dense_budget_bytes='
          f'{self.dense_budget_bytes}; use optimal_items / expected_score on '
          'item subsets, a smaller batch, or a larger dense_budget_bytes.'
      )

  def expected_score_all(self, context_ids: jax.Array) -> jax.Array:
    """q against the whole catalogue, for small catalogues (tests, evaluation).

    Args:
      context_ids: int `[batch]`.
    Returns:
      float32 `[batch, items]` (with `item_shards`: this device's rows, padding
      included).
    Raises:
      ValueError: if the result would exceed `dense_budget_bytes`.
    """
    chex.assert_rank(context_ids, 1)
    chex.assert_type(context_ids, int)
    self._check_dense(context_ids.shape[0], 'expected_score_all')
    return self._q(
        self.context_m0[context_ids],
        self.context_mz[context_ids],
        self.context_eta_root[context_ids],
        self.item_vectors,
        self.item_eta_root,
        'bd,nd->bn',
    )

  def optimal_items(self, context_ids: jax.Array, k: int) -> jax.Array:
    """The k items with the largest q(x, .), best first.

    Dense (one `[batch, items]` matrix) when it fits in `dense_budget_bytes`;
    otherwise a scan over blocks of `block_size` items with a running top-k,
    whose peak memory is a few `[batch, block_size]` arrays. Both paths give
    the same ids (ties, which have probability 0 here, go to the lower id).

    Args:
      context_ids: int `[batch]`.
      k: static, 1 <= k <= num_items.
    Returns:
      int32 `[batch, k]`.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
      raise ValueError(f'k must be a Python integer, got {k!r}')
    if not 1 <= k <= self.num_items:
      raise ValueError(f'k must be in [1, num_items={self.num_items}], got {k}')
    chex.assert_rank(context_ids, 1)
    chex.assert_type(context_ids, int)
    shards, k = self.item_shards, int(k)
    rows = self.item_vectors.shape[0]  # N, or this shard's rows
    if shards is None:
      return self._local_top_q(context_ids, k, rows)[1]
    values, ids = self._local_top_q(context_ids, min(k, rows), rows)
    return shards.merge_top_k(values, ids, k)[1]

  def _local_top_q(self, context_ids: jax.Array, k: int, rows: int
                   ) -> tuple[jax.Array, jax.Array]:
    """Top-k (q, global id) over this device's `rows` item rows (all of
    them when not sharded), dense when it fits, else by blocks."""
    shards = self.item_shards
    if context_ids.shape[0] * rows * _FLOAT_BYTES <= self.dense_budget_bytes:
      q = self.expected_score_all(context_ids)
      if shards is None:
        values, ids = lax.top_k(q, k)
        return values, ids.astype(jnp.int32)
      global_ids = shards.global_ids()
      values, ids = lax.top_k(jnp.where(global_ids < self.num_items, q, -jnp.inf), k)
      return values, global_ids[ids]
    return self._local_top_q_blocked(context_ids, k, rows)

  def _local_top_q_blocked(self, context_ids: jax.Array, k: int, rows: int
                           ) -> tuple[jax.Array, jax.Array]:
    xm0 = self.context_m0[context_ids]
    xmz = self.context_mz[context_ids]
    gx = self.context_eta_root[context_ids]
    _, size = blocked.layout(rows, self.block_size)
    offset = 0 if self.item_shards is None else self.item_shards.offset()

    def body(best, block):
      e = blocked.rows(self.item_vectors, block, size)
      ga = blocked.rows(self.item_eta_root, block, size)
      q = self._q(xm0, xmz, gx, e, ga, 'bd,nd->bn')
      ids = block.ids + offset
      q = jnp.where(block.fresh & (ids < self.num_items), q, -jnp.inf)
      return blocked.merge_top_k(*best, q, ids, k), None

    init = blocked.empty_top_k(context_ids.shape[0], k, xm0.dtype)
    best, _ = blocked.scan(body, init, rows, self.block_size, like=self.item_vectors)
    return best


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, numbers.Integral
  ):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  if value < minimum or (maximum is not None and value > maximum):
    allowed = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
    raise ValueError(f'{name} must be {allowed}, got {value}')
  return int(value)


def _unit_rows(a: jax.Array) -> jax.Array:
  return a / jnp.linalg.norm(a, axis=-1, keepdims=True)


class SyntheticDraws(NamedTuple):
  """The generator's random components (float32), from which the tables are built.

  Attributes:
    context_vectors: `[contexts, dim]` x_u, unit rows.
    item_vectors: `[items, dim]` e_a, unit rows.
    m0: `[dim, dim]` M0, unit rows.
    mz: `[dim, dim]` the latent Mz, unit rows.
    w: `[dim, dim]` W of the reward noise.
    c_x: `[dim]` context reactiveness direction.
    c_a: `[dim]` item reactiveness direction.
  """

  context_vectors: jax.Array
  item_vectors: jax.Array
  m0: jax.Array
  mz: jax.Array
  w: jax.Array
  c_x: jax.Array
  c_a: jax.Array


def draw_components(seed: int, num_contexts: int, num_items: int, dim: int,
                    shared_key: bool) -> SyntheticDraws:
  """The components of the generator, as `make_synthetic_environment` draws them.

  The seed's key is split into one key per component; with `shared_key` the
  item vectors reuse the context key, Mz the M0 key and c_a the c_x key (see
  `make_synthetic_environment`). Arguments are not checked here.
  """
  f32 = jnp.float32
  keys = jax.random.split(jax.random.key(seed), 7)
  k_ctx, k_item, k_m0, k_mz, k_cx, k_ca, k_w = (keys[i] for i in range(7))
  if shared_key:
    k_item, k_mz, k_ca = k_ctx, k_m0, k_cx
  return SyntheticDraws(
      context_vectors=_unit_rows(jax.random.uniform(k_ctx, (num_contexts, dim), f32, -1.0, 1.0)),
      item_vectors=_unit_rows(jax.random.uniform(k_item, (num_items, dim), f32, -1.0, 1.0)),
      m0=_unit_rows(jax.random.normal(k_m0, (dim, dim), f32)),
      mz=_unit_rows(jax.random.normal(k_mz, (dim, dim), f32)),
      w=jax.random.normal(k_w, (dim, dim), f32),
      c_x=jax.random.normal(k_cx, (dim,), f32),
      c_a=jax.random.normal(k_ca, (dim,), f32),
  )


def make_synthetic_environment(
    seed: int,
    *,
    num_contexts: int = 1000,
    num_items: int = 1000,
    context_dim: int = 10,
    item_dim: int = 10,
    reward_scale: float = 10.0,
    shared_key: bool = True,
    block_size: int = 65536,
    dense_budget_bytes: int = 256 * 2**20,
) -> SyntheticEnvironment:
  """Builds the synthetic environment of docs/method.md §5.1 from one seed.

  The seed's key is split into one key per component: context vectors, item
  vectors, M0, Mz, c_x, c_a, W. With `shared_key=True` (the default,
  reference-compatible: the published generator re-draws every component from
  the same seed) the item vectors reuse the context key, Mz reuses the M0 key
  and c_a reuses the c_x key, so with equal shapes x == e (row for row),
  Mz == M0 and c_x == c_a; W keeps its own key (W != M0). With
  `shared_key=False` every component has its own key. The same arguments
  always give bit-identical arrays (on one backend).

  Args:
    seed: integer in [0, 2**32).
    num_contexts: number of contexts, in [1, 2**31 - 1].
    num_items: catalogue size N, in [1, 2**31 - 1].
    context_dim: dimension d of the context vectors, >= 1.
    item_dim: dimension of the item vectors; must equal context_dim (the score
      is a bilinear form x^T M e with square M).
    reward_scale: finite, > 0; the factor in front of q (10 in the paper).
    shared_key: reference-compatible key reuse (see above), a bool.
    block_size: items per block in the blocked `optimal_items`, >= 1.
    dense_budget_bytes: largest dense `[batch, items]` float32 matrix in bytes
      that may be built, >= 0 (0 forces the blocked path).
  Returns:
    A `SyntheticEnvironment`; its arrays are float32.
  Raises:
    ValueError: an argument is out of range (the message names it).
  """
  seed = _check_int('seed', seed, 0, 2**32 - 1)
  num_contexts = _check_int('num_contexts', num_contexts, 1, _MAX_ID)
  num_items = _check_int('num_items', num_items, 1, _MAX_ID)
  context_dim = _check_int('context_dim', context_dim, 1)
  item_dim = _check_int('item_dim', item_dim, 1)
  if item_dim != context_dim:
    raise ValueError(
        f'item_dim must equal context_dim (the score x^T M e needs square M), '
        f'got context_dim={context_dim}, item_dim={item_dim}'
    )
  if (
      isinstance(reward_scale, (bool, np.bool_))
      or not isinstance(reward_scale, numbers.Real)
      or not math.isfinite(reward_scale)
      or reward_scale <= 0
  ):
    raise ValueError(
        f'reward_scale must be a finite number > 0, got {reward_scale!r}'
    )
  if not isinstance(shared_key, (bool, np.bool_)):
    raise ValueError(f'shared_key must be a bool, got {shared_key!r}')
  block_size = _check_int('block_size', block_size, 1, _MAX_ID)
  dense_budget_bytes = _check_int('dense_budget_bytes', dense_budget_bytes, 0)

  draws = draw_components(seed, num_contexts, num_items, context_dim, shared_key)
  x, e = draws.context_vectors, draws.item_vectors

  def dot(a, b):
    return jnp.matmul(a, b, precision=_EXACT)

  # eta = sqrt(s_x * s_a) = sqrt(s_x) * sqrt(s_a): one factor per side.
  return SyntheticEnvironment(
      item_vectors=e,
      context_m0=dot(x, draws.m0),
      context_mz=dot(x, draws.mz),
      context_w=dot(x, draws.w),
      context_eta_root=jnp.sqrt(jax.nn.sigmoid(dot(x, draws.c_x) + 3.0)),
      item_eta_root=jnp.sqrt(jax.nn.sigmoid(dot(e, draws.c_a) + 3.0)),
      seed=seed,
      num_contexts=num_contexts,
      num_items=num_items,
      dim=context_dim,
      reward_scale=float(reward_scale),
      shared_key=bool(shared_key),
      block_size=block_size,
      dense_budget_bytes=dense_budget_bytes,
  )
