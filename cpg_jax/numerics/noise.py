"""Gumbel noise for candidate sampling, from a counter-based hash.

Gumbel-top-k needs one Gumbel variate per (context, item). With JAX's
default Threefry generator that costs more than scoring the item itself
(measured in benchmarks/scaling.py), so the samplers draw it from a cheap
counter-based hash instead: the noise of item i for context row r is a pure
function of (key, r, i),

    h = fmix32( fmix32(i * 0x9E3779B9 ^ a_r) ^ b_r ),
    a_r = fmix32(r ^ k0),  b_r = fmix32((r * 0x85EBCA77) ^ k1),

where (k0, k1) are two 32-bit words drawn from the JAX key and fmix32 is the
MurmurHash3 finaliser (a bijection of uint32 with full avalanche). For a
fixed row, distinct items get distinct hashes. The top 24 bits give a uniform
u in (0, 1) on the grid (j + 0.5) / 2^24, the resolution of a float32
uniform, and g = -log(-log u).

Because the noise of an item does not depend on how the catalogue is cut into
blocks, the dense and the item-blocked samplers (and the Pallas kernel) draw
exactly the same candidates for the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The hash's multipliers; public because the fused kernel of `kernels/`
# regenerates the same noise inside a Pallas program.
ITEM_MULTIPLIER = 0x9E3779B9
ROW_MULTIPLIER = 0x85EBCA77


def fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (uint32 -> uint32, a bijection)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def seed_words(key: jax.Array) -> jax.Array:
  """Two uint32 words `[2]` from a JAX key: the hash's seed."""
  return jax.random.bits(key, (2,), jnp.uint32)


def row_salts(words: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row salts (a_r, b_r), each uint32 `[rows]`."""
  rows = rows.astype(jnp.uint32)
  a = fmix32(rows ^ words[0])
  b = fmix32((rows * jnp.uint32(ROW_MULTIPLIER)) ^ words[1])
  return a, b


def hashed_uniform(salt_a: jax.Array, salt_b: jax.Array, items: jax.Array) -> jax.Array:
  """Uniforms in (0, 1) for every (row, item): float32 `[rows, items]`.

  Args:
    salt_a, salt_b: uint32 `[rows]` from `row_salts`.
    items: int `[items]`, global item ids.
  """
  h = items.astype(jnp.uint32)[None, :] * jnp.uint32(ITEM_MULTIPLIER)
  h = fmix32(fmix32(h ^ salt_a[:, None]) ^ salt_b[:, None])
  return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def hashed_gumbel(words: jax.Array, rows: jax.Array, items: jax.Array) -> jax.Array:
  """Gumbel(0, 1) noise `[rows, items]` for context rows and global item ids."""
  a, b = row_salts(words, rows)
  return -jnp.log(-jnp.log(hashed_uniform(a, b, items)))
