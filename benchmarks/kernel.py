"""Time the fused top-k + log-sum-exp: Pallas kernel vs `lax.scan` reference.

For B contexts, d-dimensional embeddings and each catalogue size N and k, the
script times (median over `--repeats` calls, after one compiling call)

  xla     `kernels.fused_topk_lse_reference` (lax.scan over item blocks);
  pallas  `kernels.fused_topk_lse_pallas` (only on GPU / TPU: on CPU the
          kernel can only be interpreted, which says nothing about speed);
  dense   `lax.top_k` + `logsumexp` of the materialised `[B, N]` scores
          (skipped with --no-dense or when [B, N] exceeds --dense-max-gb);

checks that the kernel agrees with the reference (ids equal, or differing
only between scores equal to 1e-5; values and LSE to 1e-4 relative) and
prints a table. The default run (B=128, d=10, N in {1e4, 1e5, 1e6},
k in {10, 100}, 5 repeats) should take about a minute on a GPU, most of it
compilation, and about 30 s on two CPU cores (reference and dense only).

  python benchmarks/kernel.py
  python benchmarks/kernel.py --items 1000000 10000000 --k 100 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpg_jax.numerics import noise  # noqa: E402
from kernels import fused_topk_lse_dense, fused_topk_lse_pallas, fused_topk_lse_reference  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dim", type=int, default=10)
  parser.add_argument("--items", type=float, nargs="+", default=[1e4, 1e5, 1e6])
  parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-noise", action="store_true",
                      help="plain top-k instead of Gumbel-top-k")
  parser.add_argument("--ref-block-items", type=int, default=8192)
  parser.add_argument("--block-items", type=int, default=None,
                      help="kernel tile size (default: by backend)")
  parser.add_argument("--block-rows", type=int, default=None)
  parser.add_argument("--num-splits", type=int, default=None)
  parser.add_argument("--no-dense", action="store_true")
  parser.add_argument("--dense-max-gb", type=float, default=2.0)
  return parser.parse_args(argv)


def time_ms(fn, repeats):
  """(compile+first call ms, median ms of `repeats` later calls)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = 1e3 * (time.perf_counter() - start)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(1e3 * (time.perf_counter() - start))
  return out, first, statistics.median(times)


dense_jit = jax.jit(fused_topk_lse_dense, static_argnames="k")


def agreement(got, want, rtol=1e-4):
  """A short verdict on kernel vs reference."""
  values, ids, lse = (np.asarray(x) for x in got)
  want_values, want_ids, want_lse = (np.asarray(x) for x in want)
  value_err = np.max(np.abs(values - want_values) / np.maximum(np.abs(want_values), 1e-30))
  lse_err = np.max(np.abs(lse - want_lse) / np.maximum(np.abs(want_lse), 1e-30))
  differ = ids != want_ids
  # A swapped id is only acceptable between (nearly) equal scores: the two
  # paths round the dot products differently.
  tied = np.all(np.abs(values - want_values)[differ] <= 1e-5 * np.abs(want_values)[differ])
  ok = value_err <= rtol and lse_err <= rtol and (not differ.any() or tied)
  ids_text = "ids equal" if not differ.any() else f"{differ.sum()} ids differ"
  return ok, f"{'OK' if ok else 'MISMATCH'} ({ids_text}, val {value_err:.1e}, lse {lse_err:.1e})"


def fmt(x, width, digits=2):
  """Right-aligned number (left-aligned for negative width), '-' for NaN."""
  text = "-" if np.isnan(x) else f"{x:.{digits}f}"
  return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def main(argv=None):
  args = parse_args(argv)
  platform = jax.default_backend()
  run_pallas = platform != "cpu"
  print(f"backend: {platform} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  print(f"B={args.batch} d={args.dim} noise={'off' if args.no_noise else 'hash'} "
        f"repeats={args.repeats}")
  if not run_pallas:
    print("CPU backend: the Pallas kernel needs a GPU or TPU (on CPU it only runs "
          "interpreted); timing the XLA reference only.")

  key_u, key_v, key_w = jax.random.split(jax.random.PRNGKey(0), 3)
  U = jax.random.normal(key_u, (args.batch, args.dim), jnp.float32)
  words = None if args.no_noise else noise.seed_words(key_w)

  header = (f"{'N':>9} {'k':>4} | {'xla ms':>9} {'pallas ms':>9} {'dense ms':>9} | "
            f"{'xla/pallas':>10} | {'1st call s (xla/pallas)':>23} | check")
  print(header)
  print("-" * len(header))
  all_ok = True
  for n in (int(x) for x in args.items):
    V = jax.random.normal(key_v, (n, args.dim), jnp.float32) / np.sqrt(args.dim)
    for k in args.k:
      ref, ref_first, ref_ms = time_ms(
          lambda: fused_topk_lse_reference(U, V, k, words,
                                           block_items=args.ref_block_items),
          args.repeats)
      pallas_ms = pallas_first = float("nan")
      check = "-"
      if run_pallas:
        try:
          out, pallas_first, pallas_ms = time_ms(
              lambda: fused_topk_lse_pallas(
                  U, V, k, words, block_items=args.block_items,
                  block_rows=args.block_rows, num_splits=args.num_splits),
              args.repeats)
          ok, check = agreement(out, ref)
          all_ok &= ok
        except Exception as e:  # The kernel's lowering is the untested part.
          all_ok = False
          check = f"pallas FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
          traceback.print_exc(limit=2, file=sys.stderr)
      dense_ms = float("nan")
      if not args.no_dense and args.batch * n * 4 <= args.dense_max_gb * 2**30:
        _, _, dense_ms = time_ms(lambda: dense_jit(U, V, k, words), args.repeats)
      print(f"{n:>9} {k:>4} | {fmt(ref_ms, 9)} {fmt(pallas_ms, 9)} {fmt(dense_ms, 9)} | "
            f"{fmt(ref_ms / pallas_ms, 10)} | "
            f"{fmt(ref_first / 1e3, 10, 1)} / {fmt(pallas_first / 1e3, -9, 1)} | {check}",
            flush=True)
  if run_pallas:
    print("all checks passed" if all_ok else "SOME CHECKS FAILED")
  return 0 if all_ok else 1


if __name__ == "__main__":
  sys.exit(main())
