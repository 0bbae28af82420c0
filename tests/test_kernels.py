"""Tests for `kernels.fused_topk`: the Pallas kernel (interpreted on CPU), the
`lax.scan` reference and a dense brute force must agree.

The brute force materialises s = U V^T `[B, N]` (f32, HIGHEST precision), adds
the same hashed Gumbel noise (`noise.hashed_gumbel` of row ids and item ids)
and takes `lax.top_k` (ties: lower id first) and `jax.nn.logsumexp`. Item ids
must match exactly; values and log-sum-exp to 1e-5 relative. Sizes are small
because the Pallas interpreter is slow (the file runs in about 25 s on two
CPU cores).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cpg_jax.numerics import noise
from kernels import fused_topk
from kernels import fused_topk_lse
from kernels import fused_topk_lse_pallas
from kernels import fused_topk_lse_reference

RTOL = 1e-5
BATCH, ITEMS, DIM = 13, 1000, 10  # B not a multiple of 8, N not of 128.
BLOCK_ITEMS, BLOCK_ROWS = 128, 8


def pallas(U, V, k, words=None, schedule="grid", num_splits=1,
           block_items=BLOCK_ITEMS):
  return fused_topk_lse_pallas(U, V, k, words, block_items=block_items,
                               block_rows=BLOCK_ROWS, interpret=True,
                               schedule=schedule, num_splits=num_splits)


def assert_same(got, want):
  values, ids, lse = got
  want_values, want_ids, want_lse = want
  assert values.shape == want_values.shape and values.dtype == jnp.float32
  assert ids.shape == want_ids.shape and ids.dtype == jnp.int32
  assert lse.shape == want_lse.shape and lse.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
  # The absolute term only matters for a perturbed value that cancels to ~0.
  np.testing.assert_allclose(np.asarray(values), np.asarray(want_values),
                             rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(np.asarray(lse), np.asarray(want_lse), rtol=RTOL)
  assert np.all(np.diff(np.asarray(values), axis=1) <= 0)


def embeddings(seed, batch=BATCH, items=ITEMS, dim=DIM, scale=1.0):
  key_u, key_v = jax.random.split(jax.random.PRNGKey(seed))
  return (scale * jax.random.normal(key_u, (batch, dim)),
          scale * jax.random.normal(key_v, (items, dim)))


@pytest.fixture(scope="module")
def words():
  return noise.seed_words(jax.random.PRNGKey(42))


def test_tile_noise_is_bitwise_the_hash(words):
  rows, items = jnp.arange(5), jnp.arange(3000, 3256, dtype=jnp.int32)
  salt_a, salt_b = noise.row_salts(words, rows)
  got = fused_topk._tile_gumbel(salt_a[:, None], salt_b[:, None], items[None, :])
  np.testing.assert_array_equal(np.asarray(got),
                                np.asarray(noise.hashed_gumbel(words, rows, items)))


@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "gumbel"])
@pytest.mark.parametrize("k", [1, 10, 64])
def test_kernel_and_reference_match_dense(k, noisy, words):
  U, V = embeddings(k)
  w = words if noisy else None
  want = fused_topk.fused_topk_lse_dense(U, V, k, w)
  assert_same(fused_topk_lse_reference(U, V, k, w, block_items=BLOCK_ITEMS), want)
  assert_same(pallas(U, V, k, w), want)


@pytest.mark.parametrize("schedule,num_splits", [("grid", 3), ("loop", 1), ("loop", 3)])
def test_schedules_and_splits(schedule, num_splits, words):
  # 8 tiles in 3 splits of 3: the last split ends with a tile of pure padding.
  U, V = embeddings(7)
  want = fused_topk.fused_topk_lse_dense(U, V, 10, words)
  assert_same(pallas(U, V, 10, words, schedule, num_splits), want)


def test_k_larger_than_a_tile(words):
  # 64 slots fed by 32-item tiles: the set holds empty slots across tiles.
  U, V = embeddings(3, items=150)
  want = fused_topk.fused_topk_lse_dense(U, V, 64, words)
  assert_same(pallas(U, V, 64, words, "loop", 2, block_items=32), want)
  assert_same(fused_topk_lse_reference(U, V, 64, words, block_items=32), want)


@pytest.mark.parametrize("schedule,num_splits", [("grid", 1), ("loop", 3)])
def test_ties_go_to_the_lower_id(schedule, num_splits):
  # Small-integer embeddings make every dot product exact, and only 6 distinct
  # item vectors among 1000 make long runs of equal scores spanning tiles and
  # splits; the top-64 must then be the lowest ids of each tied value.
  rng = np.random.default_rng(0)
  U = jnp.asarray(rng.integers(-3, 4, (BATCH, DIM)), jnp.float32)
  distinct = rng.integers(-2, 3, (6, DIM))
  V = jnp.asarray(distinct[rng.integers(0, 6, ITEMS)], jnp.float32)
  for k in (1, 64):
    want = fused_topk.fused_topk_lse_dense(U, V, k)
    assert_same(pallas(U, V, k, None, schedule, num_splits), want)
    assert_same(fused_topk_lse_reference(U, V, k, block_items=BLOCK_ITEMS), want)
  # Sanity of the setup: the top-64 really contains ties.
  values = np.asarray(want[0])
  assert np.any(values[:, 1:] == values[:, :-1])


def test_order_keys_follow_lax_top_k():
  # lax.top_k orders floats totally: -0.0 below +0.0. The kernel compares
  # int32 keys; they must be strictly increasing along this list and invert.
  tiny = np.finfo(np.float32).tiny
  x = jnp.asarray([-np.inf, -3e38, -1.0, -tiny, -1e-45, -0.0, 0.0, 1e-45, tiny,
                   1.0, 3e38, np.inf], jnp.float32)
  keys = np.asarray(fused_topk._order_key(x))
  assert np.all(np.diff(keys.astype(np.int64)) > 0)
  assert keys.min() > fused_topk._NO_KEY
  back = fused_topk._from_order_key(jnp.asarray(keys))
  np.testing.assert_array_equal(np.asarray(back).view(np.int32), np.asarray(x).view(np.int32))


def test_merge_of_signed_zeros_and_ties():
  # The merge alone, on scores with -0.0 / +0.0 and exact ties, fed in three
  # tiles, against lax.top_k of the whole row (the kernel's dot never makes a
  # -0.0 itself: its zero-padded accumulation rounds to +0.0).
  rng = np.random.default_rng(2)
  scores = rng.choice(np.float32([-0.0, 0.0, -1.0]), p=[0.2, 0.2, 0.6], size=(4, 96))
  scores[:, rng.choice(96, 5, replace=False)] = 0.5
  top_k = jnp.full((4, 16), fused_topk._NO_KEY, jnp.int32)
  top_i = fused_topk._EMPTY_ID - jnp.broadcast_to(jnp.arange(16), (4, 16))
  for start in range(0, 96, 32):
    ids = jnp.arange(start, start + 32, dtype=jnp.int32)[None, :]
    tile = fused_topk._order_key(jnp.asarray(scores[:, start:start + 32]))
    top_k, top_i = fused_topk._merge_tile(tile, ids, top_k, top_i)
  order = np.lexsort((np.asarray(top_i), ~np.asarray(top_k)), axis=1)
  want_values, want_ids = lax.top_k(jnp.asarray(scores), 16)
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(top_i), order, 1), want_ids)
  got_values = fused_topk._from_order_key(jnp.asarray(np.take_along_axis(
      np.asarray(top_k), order, 1)))
  np.testing.assert_array_equal(np.signbit(got_values), np.signbit(want_values))


@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "gumbel"])
def test_extreme_scores(noisy, words):
  # Scores reach about +-1e3: exp overflows float32, the online LSE must not.
  U, V = embeddings(11, scale=1.0)
  U = U / jnp.linalg.norm(U, axis=1, keepdims=True) * 40.0
  V = V / jnp.linalg.norm(V, axis=1, keepdims=True) * 30.0
  w = words if noisy else None
  want = fused_topk.fused_topk_lse_dense(U, V, 10, w)
  scores = np.asarray(U, np.float64) @ np.asarray(V, np.float64).T
  assert scores.max() > 900 and scores.min() < -900
  assert scores.max() > np.log(np.finfo(np.float32).max)  # exp(s) overflows.
  exact = scores.max(1) + np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1))
  for got in (pallas(U, V, 10, w, "loop", 2),
              fused_topk_lse_reference(U, V, 10, w, block_items=BLOCK_ITEMS)):
    assert_same(got, want)
    assert np.all(np.isfinite(np.asarray(got[2])))
    np.testing.assert_allclose(np.asarray(got[2]), exact, rtol=RTOL)


def test_dispatch(words):
  U, V = embeddings(5, items=300)
  want = fused_topk.fused_topk_lse_dense(U, V, 10, words)
  # On CPU "auto" is the reference and "pallas" is interpreted automatically.
  assert_same(fused_topk_lse(U, V, 10, words), want)
  assert_same(fused_topk_lse(U, V, 10, words, implementation="xla"), want)
  assert_same(fused_topk_lse(U, V, 10, words, implementation="pallas",
                             block_items=BLOCK_ITEMS, block_rows=BLOCK_ROWS), want)
  with pytest.raises(ValueError, match="implementation"):
    fused_topk_lse(U, V, 10, implementation="cuda")


def test_bad_inputs():
  U, V = embeddings(0, items=20)
  with pytest.raises(ValueError, match="k"):
    fused_topk_lse_reference(U, V, 21)
  with pytest.raises(ValueError, match="k"):
    pallas(U, V, 0)
  with pytest.raises(ValueError, match="U"):
    fused_topk_lse_reference(U, V[:, :3], 5)
  with pytest.raises(ValueError, match="interpret"):
    fused_topk_lse_pallas(U, V, 5)


@pytest.mark.parametrize("platform,schedule", [("cuda", "loop"), ("tpu", "grid")])
def test_kernel_lowers_for_gpu_and_tpu(platform, schedule, words, monkeypatch):
  # Lowering only (Triton IR / Mosaic MLIR built in Python, no device
  # compiler): catches operations without a lowering rule on that backend.
  monkeypatch.setattr(fused_topk, "_platform",
                      lambda: "gpu" if platform == "cuda" else platform)
  U, V = embeddings(0, items=5000)
  for w in (None, words):
    for k in (1, 100):
      kernel = lambda U, V, w, k=k: fused_topk_lse_pallas.__wrapped__(
          U, V, k, w, schedule=schedule)
      text = jax.jit(kernel).trace(U, V, w).lower(
          lowering_platforms=(platform,)).as_text()
      assert ("xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") in text
