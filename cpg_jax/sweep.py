"""Run a grid of configurations, one workdir per point, each resumable.

  python -m cpg_jax.sweep --config=configs/synthetic.py --root=runs/grid_a \\
      --grid=estimator=vpg,ca_pg_swr --grid=num_candidates=5,10,20 \\
      -- --config.num_seeds=5 --config.num_steps=200000

Each `--grid=FIELD=V1,V2,...` adds an axis (FIELD is any config field, dotted
for nested ones, e.g. env.num_items). The cartesian product of the axes is run
point by point, sequentially, as `train.py` subprocesses with
`--config.FIELD=V` overrides; the point's workdir is
`ROOT/FIELD=V,FIELD=V` (fields in the order given). Arguments after `--` go to
every point. Re-running the same command resumes every unfinished point and
leaves finished ones as they are (their checkpoint is at num_steps). At the
end the report of all points is written to `ROOT/curves.png` and printed.
`--dry_run` prints the commands instead of running them.

The estimator's paper learning rate is applied automatically when
`learning_rate` is not itself a grid axis or an extra override, and the
config file is configs/synthetic.py (0.1 for vpg / vpg_swr, 0.01 for the CA
family).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from typing import Sequence

from cpg_jax import report

PAPER_LEARNING_RATES = {"vpg": 0.1, "vpg_swr": 0.1, "ca_pg": 0.01, "ca_pg_swr": 0.01}
_TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def parse_axis(text: str) -> tuple[str, list[str]]:
  field, sep, values = text.partition("=")
  if not sep or not field or not values:
    raise ValueError(f"--grid expects FIELD=V1,V2,..., got {text!r}")
  return field, [v for v in values.split(",") if v]


def grid_points(axes: Sequence[tuple[str, list[str]]]) -> list[list[tuple[str, str]]]:
  fields = [f for f, _ in axes]
  return [list(zip(fields, combo)) for combo in itertools.product(*(v for _, v in axes))]


def point_command(config: str, root: str, point, extra: Sequence[str]) -> tuple[list[str], str]:
  """The train.py command line and workdir of one grid point."""
  name = ",".join(f"{f}={v}" for f, v in point)
  workdir = os.path.join(root, name)
  args = [sys.executable, _TRAIN, f"--config={config}", f"--workdir={workdir}", "--noplot"]
  args += [f"--config.{f}={v}" for f, v in point]
  values = dict(point)
  lr_given = "learning_rate" in values or any("--config.learning_rate" in e for e in extra)
  if (not lr_given and "estimator" in values and config.startswith("configs/synthetic.py")):
    args.append(f"--config.learning_rate={PAPER_LEARNING_RATES[values['estimator']]}")
  return args + list(extra), workdir


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--root", required=True)
  parser.add_argument("--grid", action="append", default=[], required=True)
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args(argv)
  try:
    axes = [parse_axis(a) for a in args.grid]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  points = grid_points(axes)
  workdirs = []
  for i, point in enumerate(points):
    command, workdir = point_command(args.config, args.root, point, extra)
    workdirs.append(workdir)
    print(f"[{i + 1}/{len(points)}] {shlex.join(command)}", flush=True)
    if args.dry_run:
      continue
    result = subprocess.run(command)
    if result.returncode != 0:
      print(f"error: point {workdir} failed with exit code {result.returncode}; "
            "re-run the same command to resume.", file=sys.stderr)
      return result.returncode
  if not args.dry_run:
    png = report.write_report(workdirs, out=os.path.join(args.root, "curves.png"))
    print(f"Learning curves: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
