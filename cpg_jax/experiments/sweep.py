"""Run a grid of configurations, one workdir per point, each resumable.

  # A published experiment (the table is cpg_jax/experiments/paper.py)
  python -m cpg_jax.experiments.sweep --experiment=a --root=runs/paper_a
  python -m cpg_jax.experiments.sweep --experiment=b --root=runs/paper_b \\
      --publish=docs/results/b -- --config.num_seeds=3 --config.num_steps=100000
  python -m cpg_jax.experiments.sweep --experiment=d --root=runs/paper_d \\
      -- --config.env.data_path=/data/small_matrix.csv

  # Any grid
  python -m cpg_jax.experiments.sweep --config=configs/synthetic.py --root=runs/grid \\
      --grid=estimator=vpg,ca_pg_swr --grid=num_candidates=5,10,20 \\
      -- --config.num_seeds=5 --config.num_steps=200000
  python -m cpg_jax.experiments.sweep --config=configs/synthetic.py --root=runs/lm \\
      --grid=estimator=vpg,ca_pg --grid=num_outputs+num_models=1+1,1+5,5+1,5+5

Axes. `--grid=FIELD=V1,V2,...` adds an axis (FIELD is any config field,
dotted for nested ones, e.g. env.num_items). `--grid=F1+F2=A1+A2,B1+B2` is a
*joint* axis: the fields take the listed pairs together (not their product).
`--experiment=a|b|c|d` takes the axes, fixed fields, learning rates and
facets of that published experiment instead (it excludes --config/--grid;
experiment (e) is `python benchmarks/paper_runtime.py`). With --experiment,
`--values=FIELD=V1,V2` replaces the values of one of its axes, e.g. a smaller
K on a small data file.

Points. The cartesian product of the axes (first axis outermost) is run point
by point, sequentially, as `train.py` subprocesses with `--config.FIELD=V`
overrides; the point's workdir is `ROOT/FIELD=V,FIELD=V` (fields in axis
order, e.g. `ROOT/estimator=vpg,num_outputs=1,num_models=5`). Arguments after
`--` go to every point (they may not set an axis field; they replace a fixed
field). `--points=0,5,8-11` runs only those points (0-based, in the order the
dry run prints them), e.g. to split a sweep across machines or for a quick
test. Re-running the same command resumes every unfinished point; a finished
point's checkpoint is at num_steps and train.py returns at once. Ctrl-C
reaches the running point's train.py once (it saves at the end of its chunk),
then the sweep stops and prints the command that resumes it; a second Ctrl-C
stops that train.py at once.

Learning rate. Where a point sets the estimator, its paper learning rate
for the config's environment (`experiments.paper.default_learning_rate`: 0.1
for vpg / vpg_swr and 0.01 for the CA family on the synthetic environment,
0.01 for all on KuaiRec) is passed explicitly, unless `learning_rate` is
itself an axis or an override after `--`; elsewhere the config's own
learning rate holds.

Report. At the end, every point with results (this run's and earlier ones)
goes into `ROOT/curves.png` (one panel per facet value, `--facet` or the
experiment's; for --grid, by default one panel per value of the non-estimator
axes) and `ROOT/results.md`, and the table is printed. `--publish=PREFIX`
also copies them to PREFIX.png and PREFIX.md (e.g. docs/results/a).
`--dry_run` prints the commands instead of running them, and the estimated
time of each point and of the whole sweep on this machine
(`experiments.estimate`: from a point's metrics.jsonl when it has run before,
else from a short timed run of its command, start-up and compiling included,
which takes about as long as a point takes to start; `--estimate=none` skips
it).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Sequence

from cpg_jax import user_errors
from cpg_jax.experiments import estimate
from cpg_jax.experiments import paper
from cpg_jax.experiments import report
from cpg_jax.experiments import runs as runs_lib
from cpg_jax.experiments.paper import Axis
from cpg_jax.training import config as config_lib
from cpg_jax.training import interrupts
from cpg_jax.user_errors import UserError

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TRAIN = os.path.join(_REPO, "train.py")
EXIT_USER_ERROR = user_errors.EXIT_USER_ERROR
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C.
# estimator -> learning rate to pass, or None to keep the config's.
LearningRateRule = Callable[[str], "float | None"]


class SweepError(UserError, ValueError):
  """A mistake on the sweep's command line; the message says what is allowed."""


def parse_axis(text: str) -> Axis:
  """`FIELD=V1,V2` or the joint form `F1+F2=A1+A2,B1+B2` as an `Axis`."""
  spec, sep, values = text.partition("=")
  fields = spec.split("+")
  items = [v for v in values.split(",") if v]
  if not sep or not all(fields) or not items:
    raise SweepError(
        f"--grid expects FIELD=V1,V2,... or a joint axis F1+F2=A1+A2,B1+B2,...; got {text!r}")
  if len(fields) == 1:
    return Axis.single(fields[0], items)
  parts = [item.split("+") for item in items]
  for item, part in zip(items, parts):
    if len(part) != len(fields):
      raise SweepError(
          f"--grid={text}: value {item!r} has {len(part)} part(s) but the joint axis "
          f"{spec} has {len(fields)} fields; write one '+'-separated value per field")
  return Axis.joint(fields, parts)


def grid_points(axes: Sequence[Axis]) -> list[list[tuple[str, str]]]:
  """The points of the cartesian product of `axes`, each as (field, value) pairs."""
  points = []
  for combo in itertools.product(*(axis.values for axis in axes)):
    point = []
    for axis, value in zip(axes, combo):
      point.extend(zip(axis.fields, value))
    points.append(point)
  return points


def override_fields(extra: Sequence[str]) -> set[str]:
  """The config fields that `--config.FIELD=V` arguments in `extra` set."""
  return {arg[len("--config."):].split("=", 1)[0] for arg in extra
          if arg.startswith("--config.")}


def point_name(point: Sequence[tuple[str, str]]) -> str:
  return ",".join(f"{f}={v}" for f, v in point)


def point_command(config: str, root: str, point: Sequence[tuple[str, str]],
                  extra: Sequence[str], fixed: Sequence[tuple[str, str]] = (),
                  learning_rate_of: LearningRateRule = lambda estimator: None
                  ) -> tuple[list[str], str]:
  """The train.py command line and workdir of one grid point.

  Args:
    config: the config file argument of train.py.
    root: the sweep's root directory.
    point: the point's (field, value) overrides; they name the workdir.
    extra: arguments for every point (after `--`); they win over `fixed`.
    fixed: (field, value) overrides for every point, not in the name.
    learning_rate_of: the learning rate of a point's estimator (None: keep
      the config's), used unless the point or `extra` sets the learning rate.
  """
  workdir = os.path.join(root, point_name(point))
  args = [sys.executable, _TRAIN, f"--config={config}", f"--workdir={workdir}", "--noplot"]
  args += [f"--config.{f}={v}" for f, v in point]
  given = override_fields(extra) | {f for f, _ in point}
  args += [f"--config.{f}={v}" for f, v in fixed if f not in given]
  estimator = dict(point).get("estimator")
  rate = None if estimator is None or "learning_rate" in given else learning_rate_of(estimator)
  if rate is not None:
    args.append(f"--config.learning_rate={rate}")
  return args + list(extra), workdir


def config_environment(config: str, extra: Sequence[str]) -> str:
  """The `env.name` of the config file argument `FILE[:ARG]` (an
  `--config.env.name=` override in `extra` wins)."""
  for arg in extra:
    if arg.startswith("--config.env.name="):
      return arg.split("=", 1)[1]
  return str(config_lib.load_config_file(config, SweepError).env.name)


def parse_points(text: str, count: int) -> list[int]:
  """`0,5,8-11` as sorted point indices in [0, count)."""
  chosen = set()
  for part in filter(None, (p.strip() for p in text.split(","))):
    low, dash, high = part.partition("-")
    try:
      first, last = int(low), int(high) if dash else int(low)
    except ValueError:
      raise SweepError(
          f"--points expects 0-based indices and ranges such as 0,5,8-11; got {text!r}"
      ) from None
    if first > last or first < 0 or last >= count:
      raise SweepError(
          f"--points={text}: {part!r} is outside the sweep's points 0..{count - 1} "
          "(--dry_run lists them)")
    chosen.update(range(first, last + 1))
  if not chosen:
    raise SweepError(f"--points={text!r} selects no point")
  return sorted(chosen)


def _repo_path(relative: str) -> str:
  """`relative` if it names the repository's file from here, else the absolute path."""
  absolute = os.path.join(_REPO, relative)
  if os.path.exists(relative) and os.path.samefile(relative, absolute):
    return relative
  return absolute


def _replace_axis(axes: list[Axis], text: str, experiment: str) -> list[Axis]:
  new = parse_axis(text)
  for i, axis in enumerate(axes):
    if axis.fields == new.fields:
      return axes[:i] + [new] + axes[i + 1:]
  raise SweepError(
      f"--values={text}: experiment {experiment} has no axis {new.name}; its axes are "
      + ", ".join(a.name for a in axes))


def _plan(args) -> dict:
  """Axes, fixed fields, learning rates, facets and title of the sweep."""
  if args.experiment:
    if args.config or args.grid:
      raise SweepError("--experiment takes its config and axes from the experiment table; "
                       "drop --config/--grid (use --values=FIELD=V1,V2 to change an "
                       "axis's values)")
    try:
      experiment = paper.get(args.experiment)
    except ValueError as e:  # (e) is a benchmark, not a sweep: the message says so.
      raise SweepError(str(e)) from None
    axes = list(experiment.axes)
    for text in args.values:
      axes = _replace_axis(axes, text, experiment.name)
    environment = experiment.environment
    return {"config": _repo_path(experiment.config), "axes": axes,
            "fixed": experiment.fixed,
            "learning_rate_of": lambda e: paper.default_learning_rate(e, environment),
            "facet": experiment.facet, "title": experiment.title,
            "required": experiment.required}
  if not args.config or not args.grid:
    raise SweepError("give either --experiment=a|b|c|d, or --config=FILE with at least "
                     "one --grid=FIELD=V1,V2")
  if args.values:
    raise SweepError("--values changes an --experiment's axes; with --config, write the "
                     "values in --grid")
  axes = [parse_axis(a) for a in args.grid]
  fields = [f for axis in axes for f in axis.fields]
  if len(set(fields)) != len(fields):
    raise SweepError(f"a field appears on two --grid axes: {', '.join(fields)}")
  facet = tuple(f for f in fields if f != "estimator") if "estimator" in fields else ()
  learning_rate_of = lambda estimator: None
  if "estimator" in fields:
    environment = config_environment(args.config, args.extra)
    learning_rate_of = lambda e: paper.default_learning_rate(e, environment)
  return {"config": args.config, "axes": axes, "fixed": (),
          "learning_rate_of": learning_rate_of, "facet": facet,
          "title": None, "required": ()}


def _publish(png: str, markdown: str, prefix: str) -> tuple[str, str]:
  prefix = os.path.splitext(prefix)[0] if prefix.endswith((".png", ".md")) else prefix
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  targets = (f"{prefix}.png", f"{prefix}.md")
  shutil.copyfile(png, targets[0])
  shutil.copyfile(markdown, targets[1])
  return targets


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m cpg_jax.experiments.sweep", description=__doc__.splitlines()[0],
      epilog="Arguments after `--` go to every train.py run, e.g. -- --config.num_seeds=3")
  parser.add_argument("--experiment", choices=[*paper.EXPERIMENTS, paper.RUNTIME.name],
                      help="a published experiment of docs/method.md §6")
  parser.add_argument("--config", help="config file (with --grid)")
  parser.add_argument("--root", required=True, help="one workdir per point under ROOT")
  parser.add_argument("--grid", action="append", default=[],
                      help="FIELD=V1,V2 or F1+F2=A1+A2,B1+B2 (joint); repeatable")
  parser.add_argument("--values", action="append", default=[],
                      help="with --experiment: FIELD=V1,V2 replaces that axis's values")
  parser.add_argument("--points", default=None,
                      help="run only these points, 0-based, e.g. 0,5,8-11")
  parser.add_argument("--facet", default=None,
                      help="comma-separated config fields, one plot panel per value "
                           "('' for one panel)")
  parser.add_argument("--title", default=None, help="figure and table title")
  parser.add_argument("--publish", default=None,
                      help="also copy curves.png and results.md to PREFIX.png, PREFIX.md")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the commands and the estimated time; run nothing")
  parser.add_argument("--estimate", choices=("measure", "none"), default="measure",
                      help="with --dry_run: 'measure' (default) estimates the time of each "
                           "point on this machine (from its metrics.jsonl, else by a short "
                           "timed run of its command: seconds per point); 'none' skips it")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the sweep; a user error prints one paragraph and returns 2."""
  try:
    return _main(list(sys.argv[1:] if argv is None else argv))
  except UserError as e:
    print(user_errors.format_error(e), file=sys.stderr)
    return EXIT_USER_ERROR


def _main(argv: list[str]) -> int:
  own, extra = argv, []
  if "--" in argv:
    cut = argv.index("--")
    own, extra = argv[:cut], argv[cut + 1:]
  args = _parser().parse_args(own)
  args.extra = extra
  plan = _plan(args)
  axis_fields = {f for axis in plan["axes"] for f in axis.fields}
  clash = sorted(override_fields(extra) & axis_fields)
  if clash:
    raise SweepError(
        f"the arguments after -- set {', '.join(clash)}, which the sweep varies (it names "
        "the workdirs); change the axis instead"
        + (" with --values" if args.experiment else " in --grid"))
  points = grid_points(plan["axes"])
  selected = (parse_points(args.points, len(points)) if args.points is not None
              else list(range(len(points))))
  facet = plan["facet"] if args.facet is None else runs_lib.parse_facet(args.facet)

  given = override_fields(extra)
  missing = [(f, what) for f, what in plan["required"] if f not in given]
  if missing and not args.dry_run:
    raise SweepError(
        f"experiment {args.experiment} needs "
        + "; ".join(f"--config.{f}=... ({what})" for f, what in missing)
        + " after --, e.g. python -m cpg_jax.experiments.sweep --experiment="
        f"{args.experiment} --root={args.root} -- --config.{missing[0][0]}=PATH")

  commands = [point_command(plan["config"], args.root, point, extra, plan["fixed"],
                            plan["learning_rate_of"]) for point in points]
  what = f"experiment {args.experiment}" if args.experiment else "grid"
  print(f"Sweep ({what}): {len(points)} point{'s' * (len(points) != 1)} under {args.root}"
        + (f", running {len(selected)} (--points={args.points})"
           if args.points is not None else ""), flush=True)
  for f, desc in missing:
    print(f"note: a real run needs --config.{f}=... after -- ({desc})")
  returncode = _run_points(commands, selected, args.dry_run, argv)
  if args.dry_run and args.estimate == "measure":
    print("Estimating the time of each point:", flush=True)
    estimates = estimate.estimate_points(commands, selected,
                                         progress=lambda line: print(line, flush=True))
    print(estimate.format_estimates(estimates, [point_name(p) for p in points]))
  if returncode or args.dry_run:
    return returncode
  return _report(args, argv, plan, facet, [w for _, w in commands])


def _run_point(command: Sequence[str]) -> tuple[int, bool]:
  """Runs one train.py in its own session, forwarding each SIGINT and SIGTERM
  the sweep gets to it (so one Ctrl-C is one Ctrl-C for train.py: it saves
  at the end of its chunk; a second one stops it at once). Returns (exit
  code, whether the sweep was interrupted)."""
  process = subprocess.Popen(command, start_new_session=True)
  received = []

  def forward(signum):
    received.append(signum)
    process.send_signal(signum)

  with interrupts.handling(forward):  # Outside the main thread: no forwarding.
    returncode = process.wait()
  return returncode, bool(received)


def _run_points(commands, selected: Sequence[int], dry_run: bool, argv: Sequence[str]) -> int:
  """Runs (or, dry, prints) the selected points in order; the first failing
  point's exit code, else 0 (130 when an interrupt stopped the sweep)."""
  for n, i in enumerate(selected):
    command, workdir = commands[i]
    print(f"[#{i}, {n + 1} of {len(selected)}] {shlex.join(command)}", flush=True)
    if dry_run:
      continue
    returncode, interrupted = _run_point(command)
    if interrupted:
      print(f"Sweep stopped at point #{i} ({workdir}); the points after it did not run. "
            "Resume with:\n  python -m cpg_jax.experiments.sweep " + shlex.join(argv),
            flush=True)
      return EXIT_INTERRUPTED
    if returncode == EXIT_USER_ERROR:
      print(f"error: train.py refused point #{i} ({workdir}) with the error above; fix "
            "its cause, then re-run the same command (finished points are kept).",
            file=sys.stderr)
      return returncode
    if returncode != 0:
      print(f"error: point #{i} ({workdir}) stopped with exit code {returncode}; "
            "re-run the same command to resume it.", file=sys.stderr)
      return returncode
  return 0


def _report(args, argv, plan, facet, workdirs: Sequence[str]) -> int:
  """Writes ROOT/curves.png and ROOT/results.md over every point with results."""
  ready = [w for w in workdirs if runs_lib.has_results(w)]
  absent = [os.path.basename(w) for w in workdirs if w not in ready]
  notes = ["Command: `python -m cpg_jax.experiments.sweep " + shlex.join(argv) + "`"]
  if absent:
    notes.append(f"Not yet run ({len(absent)} of {len(workdirs)} points): "
                 + "; ".join(absent) + ".")
  png = os.path.join(args.root, "curves.png")
  markdown = os.path.join(args.root, "results.md")
  report.write_report(ready, out=png, title=args.title or plan["title"],
                      markdown=markdown, facet=facet, notes=notes)
  print(f"Learning curves: {png}\nTable: {markdown}")
  if absent:
    print(f"{len(absent)} of {len(workdirs)} points have no results yet.")
  if args.publish:
    targets = _publish(png, markdown, args.publish)
    print(f"Published: {targets[0]}, {targets[1]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
