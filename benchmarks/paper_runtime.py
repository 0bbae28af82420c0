"""Experiment (e) of docs/method.md §6: seconds per 1,000 gradient steps.

  python benchmarks/paper_runtime.py [--settings 5x1,10x1,20x1,20x5]
      [--estimators vpg,vpg_swr,ca_pg,ca_pg_swr] [--seeds 1,10]
      [--chunk 1000] [--repeats 3] [--markdown docs/results/e.md]

For each estimator and (K, L) setting of the paper (synthetic environment,
N = 1,000 items, batch 128, M = 1, Adagrad; cpg_jax.experiments.paper.RUNTIME)
and each seed count, one compiled chunk of `--chunk` training steps (a
`lax.scan` over the vmapped seeds, exactly what train.py runs between
evaluations) is run once to compile, then `--repeats` times timed
(`measure` of benchmarks/train_throughput.py). Evaluation and checkpointing
are not included.

Printed: one table per seed count, estimators x (K, L), of wall-clock
seconds per 1,000 gradient steps of the whole program (with 10 seeds, all
10 advance by 1,000 steps in that time; divide by 10 for seconds per seed).
The full run (16 settings x 2 seed counts) takes a few minutes on an
accelerator and about half an hour on 2 CPU cores; `--chunk 200 --repeats 1`
gives a rough number much sooner.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from cpg_jax.training import config as config_lib  # noqa: E402
from cpg_jax.experiments import paper as paper_experiments  # noqa: E402
from cpg_jax.experiments import runs as runs_lib  # noqa: E402
from train_throughput import measure  # noqa: E402  (benchmarks/train_throughput.py)


def parse_settings(text: str) -> list[tuple[int, int]]:
  """`5x1,20x5` as [(K, L), ...]."""
  settings = []
  for part in filter(None, text.split(",")):
    k, sep, l = part.partition("x")
    if not sep or not k.isdigit() or not l.isdigit():
      raise SystemExit(f"error: --settings expects KxL pairs such as 5x1,20x5; got {part!r}")
    settings.append((int(k), int(l)))
  return settings


def runtime_config(estimator: str, k: int, l: int, seeds: int):
  """The paper's synthetic setting (config defaults) at (K, L), M = 1."""
  c = config_lib.default_config()
  c.estimator = estimator
  c.num_candidates = k
  c.num_outputs = l
  c.num_models = 1
  c.num_seeds = seeds
  c.learning_rate = paper_experiments.default_learning_rate(estimator) or 0.01
  config_lib.validate(c)
  return c


def tables(results: dict, settings, estimators, seed_counts) -> str:
  """One Markdown table per seed count: estimators x (K, L), s per 1,000 steps."""
  out = []
  for seeds in seed_counts:
    what = "1 seed" if seeds == 1 else f"{seeds} seeds vmapped in one program"
    out.append(f"Seconds per 1,000 gradient steps, {what}:\n")
    out.append("| estimator | " + " | ".join(f"K={k}, L={l}" for k, l in settings) + " |")
    out.append("|---|" + "---:|" * len(settings))
    for name in estimators:
      cells = [f"{results[(name, k, l, seeds)]:.2f}" for k, l in settings]
      out.append(f"| {runs_lib.estimator_name(name)} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def main(argv=None) -> int:
  spec = paper_experiments.RUNTIME
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", default=",".join(f"{k}x{l}" for k, l in spec.settings))
  parser.add_argument("--estimators", default=",".join(spec.estimators))
  parser.add_argument("--seeds", default=",".join(str(s) for s in spec.seeds))
  parser.add_argument("--chunk", type=int, default=1000, help="steps per timed chunk")
  parser.add_argument("--repeats", type=int, default=3, help="timed chunks (median)")
  parser.add_argument("--markdown", default=None, help="also write the tables here")
  args = parser.parse_args(argv)
  settings = parse_settings(args.settings)
  estimators = [e for e in args.estimators.split(",") if e]
  seed_counts = [int(s) for s in args.seeds.split(",") if s]
  unknown = [e for e in estimators if e not in paper_experiments.ESTIMATORS]
  if unknown or args.chunk < 1 or args.repeats < 1 or not seed_counts:
    raise SystemExit(f"error: estimators must be among {', '.join(paper_experiments.ESTIMATORS)}"
                     f" (got {', '.join(unknown) or 'ok'}); --chunk and --repeats must be >= 1")

  header = (f"{spec.title}\n\njax {jax.__version__}, device {jax.devices()[0].device_kind}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; chunk "
            f"{args.chunk} steps, median of {args.repeats}; compilation excluded.\n")
  print(header, flush=True)
  results = {}
  started = time.perf_counter()
  for k, l in settings:
    for name in estimators:
      for seeds in seed_counts:
        seconds = measure(runtime_config(name, k, l, seeds), seeds, args.chunk, args.repeats)
        results[(name, k, l, seeds)] = seconds / args.chunk * 1000
        print(f"  {name} K={k} L={l} seeds={seeds}: "
              f"{results[(name, k, l, seeds)]:.3f} s per 1,000 steps", file=sys.stderr,
              flush=True)
  text = tables(results, settings, estimators, seed_counts)
  print(text)
  print(f"(measured in {time.perf_counter() - started:.0f} s)")
  if args.markdown:
    os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
    with open(args.markdown, "w") as f:
      f.write(f"# {header}\n{text}")
    print(f"Table: {args.markdown}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
