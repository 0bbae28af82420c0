"""Step time and per-device memory against the number of devices and the mesh.

  python benchmarks/scaling_devices.py [--items 1e5,1e6,1e7] [--candidates 1000]
      [--meshes 1x1,1x2,1x4,1x8,2x4] [--estimator ca_pg_swr] [--seeds_throughput]

Table 1 (the catalogue across devices): for each N and mesh (seeds x items),
one training step of the synthetic environment (batch 128, K candidates,
Adagrad, the score path `auto`: item-blocked when a dense block would exceed
the budget, so the scan runs inside each shard), compiled with the mesh;
per-device memory from XLA's own accounting of the compiled program
(`memory_analysis()`: arguments + outputs + temporaries - aliased, per
device) and the median time of a few steps after compiling.

Table 2 (`--seeds_throughput`): seed-steps/s of the paper's setting (N = 1,000,
K = 10, 10 seeds, chunks of 500 steps) with the seeds on 1 and on 2 devices.

Each configuration runs in its own process, started with the devices it needs
(`--cpu_devices`, set before JAX starts). On a CPU the "devices" share the
same cores: the memory column is the point of table 1 (it must fall about
1/D on the item axis), not the time; on this 2-core machine two devices may
use both cores better than one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one(args) -> dict:
  """Runs in the child process: measures one configuration, returns a dict."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", args.devices)
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from cpg_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import spec as spec_lib  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.default_config()
  c.estimator = args.estimator
  c.env.num_items = args.n
  c.env.num_contexts = 1000
  c.num_candidates = args.k
  c.num_seeds = args.seeds
  c.item_block_size = args.block
  c.dense_budget_mb = int(args.dense_budget_mb)
  spec = spec_lib.from_config(c)
  shape = mesh_lib.MeshShape(args.mesh_seeds, args.mesh_items)
  mesh = None if shape.is_single_device else mesh_lib.build(shape)
  pipeline, env = pipeline_lib.build(spec, None if mesh is None else shape.item_shards)
  states = state_lib.init_states(pipeline, spec.seeds)
  if mesh is not None:
    env = mesh_lib.place_env(env, mesh, pipeline.item_shards)
    states = mesh_lib.place_states(states, mesh, pipeline.item_shards)
  chunk = step_lib.make_train_chunk(pipeline, mesh=mesh)
  compiled = chunk.lower(states, env, args.steps).compile()
  memory = compiled.memory_analysis()
  per_device = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  times = []
  if args.repeats:
    states, _ = chunk(states, env, args.steps)  # the compiled program's first run
    jax.block_until_ready(states)
  for _ in range(args.repeats):
    start = time.perf_counter()
    states, _ = chunk(states, env, args.steps)
    jax.block_until_ready(states)
    times.append((time.perf_counter() - start) / args.steps)
  return {"per_device_mb": per_device / 2**20, "temp_mb": memory.temp_size_in_bytes / 2**20,
          "argument_mb": memory.argument_size_in_bytes / 2**20,
          "step_s": float(np.median(times)) if times else float("nan"),
          "blocked": pipeline.uses_blocked_scores(spec.batch_size)}


def _child(**kw) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--child",
             *[f"--{k}={v}" for k, v in kw.items()]]
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def _catalogue_table(args) -> None:
  print("| N | mesh (seeds x items) | devices | score path in each shard | memory per device "
        "MB | of which arguments MB | step s | memory x devices / 1-device memory |")
  print("|---:|---|---:|---|---:|---:|---:|---:|")
  for n in (int(float(x)) for x in args.items.split(",")):
    base = None
    for mesh in args.meshes.split(","):
      seeds, items = (int(v) for v in mesh.split("x"))
      out = _child(n=n, k=args.candidates, estimator=args.estimator, seeds=seeds,
                   mesh_seeds=seeds, mesh_items=items, devices=seeds * items,
                   steps=args.steps, repeats=args.repeats, block=args.block,
                   dense_budget_mb=args.dense_budget_mb)
      # Memory per seed-device: the 1 x D rows divide one seed's catalogue.
      base = base or out["per_device_mb"] / seeds
      ratio = out["per_device_mb"] * items / seeds / base
      print(f"| {n:,} | {mesh} | {seeds * items} | "
            f"{'item-blocked' if out['blocked'] else 'dense'} | {out['per_device_mb']:,.1f} | "
            f"{out['argument_mb']:,.1f} | {out['step_s']:.3f} | {ratio:.2f} |", flush=True)


def _seeds_table(args) -> None:
  print("| devices (seeds x items) | seeds | steps/s | seed-steps/s | ratio to 1 device |")
  print("|---|---:|---:|---:|---:|")
  first = None
  for devices in (1, 2):
    out = _child(n=1000, k=10, estimator=args.estimator, seeds=10, mesh_seeds=devices,
                 mesh_items=1, devices=devices, steps=500, repeats=args.repeats,
                 block=65536, dense_budget_mb=1024)
    rate = 1.0 / out["step_s"]
    first = first or rate
    print(f"| {devices} x 1 | 10 | {rate:,.0f} | {10 * rate:,.0f} | {rate / first:.2f} |",
          flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--items", default="1e5,1e6,1e7")
  parser.add_argument("--candidates", type=int, default=1000)
  parser.add_argument("--meshes", default="1x1,1x2,1x4,1x8,2x4")
  parser.add_argument("--estimator", default="ca_pg_swr")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed chunks per configuration; 0: compile only (memory)")
  parser.add_argument("--block", type=int, default=65536)
  parser.add_argument("--dense_budget_mb", type=float, default=256)
  parser.add_argument("--seeds_throughput", action="store_true")
  # Child-only arguments.
  for name in ("n", "k", "seeds", "mesh_seeds", "mesh_items", "devices"):
    parser.add_argument(f"--{name}", type=int, default=1)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_one(args)))
    return
  print(f"# scaling_devices: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; CPU devices share the cores (time is not the point)")
  print(f"# {args.estimator}, batch 128, K={args.candidates}, {args.steps}-step chunks, "
        f"median of {args.repeats}, item blocks of {args.block}, dense budget "
        f"{args.dense_budget_mb:g} MB")
  _catalogue_table(args)
  if args.seeds_throughput:
    print()
    _seeds_table(args)


if __name__ == "__main__":
  main()
