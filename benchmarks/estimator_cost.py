"""The cost of a training step per estimator, as a ratio to CA-PG's.

For each catalogue size N and candidate count K, one full jitted training step
(`training.step.train_step`: contexts, two-tower scores, Gumbel-top-k, the
optimal LSR, rewards, the estimator's loss, its gradient, the Adagrad update)
is compiled and timed for each estimator, and the median step time is printed
with its ratio to `ca_pg`'s, measured in the same process just before. The
score path is the library's choice for the settings (`--score_path`, default
auto: item-blocked when a dense `[batch, N]` matrix would exceed
`dense_budget_mb`). A combination listed in `--skip` (N:K) is printed as not
run, with the reason given.

  python benchmarks/estimator_cost.py --items 1000,100000,1000000 \
      --candidates 10,100,1000 --batch 32 --repeats 5 --skip 1000000:1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax

from cpg_jax.training import config as config_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib

ESTIMATORS = ("ca_pg", "ca_pg_swr", "ca_pg_exact", "ca_pg_ss")


def step_times(args, estimator: str, num_items: int, k: int) -> tuple[float, float, str]:
  """(compile + first step s, median ms per step, score path) of one estimator."""
  c = config_lib.default_config()
  config_lib.apply_overrides(c, {
      "estimator": estimator, "env.num_items": num_items, "env.num_contexts": args.contexts,
      "num_candidates": k, "batch_size": args.batch, "num_seeds": 1,
      "score_path": args.score_path, "learning_rate": 0.01})
  pipeline, env = pipeline_lib.from_config(c)
  path = "blocked" if pipeline.uses_blocked_scores(args.batch) else "dense"
  step = jax.jit(lambda state, env: step_lib.train_step(pipeline, env, state))
  state = state_lib.init_state(pipeline, 0)
  start = time.perf_counter()
  state, metrics = step(state, env)
  jax.block_until_ready((state, metrics))
  first = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, metrics = step(state, env)
    jax.block_until_ready((state, metrics))
    times.append(1e3 * (time.perf_counter() - start))
  if not bool(metrics["finite"]):
    raise RuntimeError(f"{estimator} N={num_items} K={k}: non-finite step")
  return first, statistics.median(times), path


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", default="1000,100000,1000000")
  parser.add_argument("--candidates", default="10,100,1000")
  parser.add_argument("--estimators", default=",".join(ESTIMATORS))
  parser.add_argument("--batch", type=int, default=32, help="rollouts per step")
  parser.add_argument("--contexts", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--score_path", default="auto")
  parser.add_argument("--skip", default="", help="N:K pairs not to run, comma-separated")
  parser.add_argument("--skip_reason", default="not run: over this CPU's time budget")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  skip = {tuple(int(v) for v in p.split(":")) for p in args.skip.split(",") if p}
  names = [e for e in args.estimators.split(",") if e]
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} | {device.platform} ({device.device_kind}) | batch "
        f"{args.batch} | contexts {args.contexts} | median of {args.repeats} steps after "
        "compilation | optimal LSR, L = 1, M = 1")
  print("\n| N | K | path | " + " | ".join(f"{e} ms (x ca_pg)" for e in names)
        + " | compile s (max) |")
  print("|---:|---:|---|" + "---:|" * (len(names) + 1))
  for num_items in (int(v) for v in args.items.split(",")):
    for k in (int(v) for v in args.candidates.split(",")):
      if k > num_items:
        continue
      if (num_items, k) in skip:
        print(f"| {num_items:,} | {k} | - | " + " | ".join("-" for _ in names)
              + f" | {args.skip_reason} |", flush=True)
        continue
      cells, compile_max, base, path = [], 0.0, None, "?"
      for name in names:
        first, ms, path = step_times(args, name, num_items, k)
        base = ms if name == "ca_pg" else base
        ratio = f" ({ms / base:.2f})" if base else ""
        cells.append(f"{ms:.1f}{ratio}")
        compile_max = max(compile_max, first)
      print(f"| {num_items:,} | {k} | {path} | " + " | ".join(cells)
            + f" | {compile_max:.1f} |", flush=True)


if __name__ == "__main__":
  sys.exit(main())
