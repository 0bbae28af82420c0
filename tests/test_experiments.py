"""The published experiments as sweeps: expansion, end-to-end runs, errors.

The dry-run tests check the full expansion of experiments (a)-(d) (points,
learning rates, workdir names, fixed fields). The end-to-end tests run one
point of each experiment through the CLI with a tiny protocol (2 seeds, 200
steps) and check the outputs; (d) runs on the KuaiRec fixture with K reduced
to fit its 40 items. The `slow` variant runs every point of (c) and (d).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from cpg_jax.experiments import paper as paper_experiments
from cpg_jax.experiments import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "kuairec_small_matrix.csv")
TINY = ["--config.num_seeds=2", "--config.num_steps=200", "--config.eval_every=100",
        "--config.eval_contexts=200", "--config.checkpoint_every=200",
        "--config.log_every=100"]
SYNTHETIC_LR = {"vpg": "0.1", "vpg_swr": "0.1", "ca_pg": "0.01", "ca_pg_swr": "0.01"}


def with_own_args(args, *own):
  """`args` with the sweep's own arguments `own` put before any `--`."""
  args = list(args)
  cut = args.index("--") if "--" in args else len(args)
  return args[:cut] + list(own) + args[cut:]


def dry_run(capsys, *args):
  """The train.py commands a dry run prints, as {point index: argv list}."""
  assert sweep.main(with_own_args(args, "--dry_run", "--estimate=none")) == 0
  out = capsys.readouterr().out
  commands = {}
  for line in out.splitlines():
    match = re.match(r"\[#(\d+), \d+ of \d+\] (.*)", line)
    if match:
      commands[int(match.group(1))] = match.group(2).split()
  return commands, out


def flag(command, name):
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  assert len(values) <= 1, f"--{name} given twice: {command}"
  return values[0] if values else None


EXPANSIONS = {
    # experiment: (config file, points, {field: values}, {fixed field: value})
    "a": ("configs/synthetic.py", 12, {"num_candidates": {"5", "10", "20"}},
          {"num_outputs": "1", "num_models": "1", "lsr": "optimal"}),
    "b": ("configs/synthetic.py", 16, {"lsr": {"optimal", "noisy", "uniform", "anti"}},
          {"num_candidates": "10", "num_outputs": "1", "num_models": "1"}),
    "c": ("configs/synthetic.py", 16, {"num_outputs": {"1", "5"}, "num_models": {"1", "5"}},
          {"num_candidates": "10", "lsr": "optimal"}),
    "d": ("configs/kuairec.py", 6, {"num_candidates": {"50", "100", "200"}},
          {"num_outputs": "1", "num_models": "1", "lsr": "optimal"}),
}


@pytest.mark.parametrize("name", sorted(EXPANSIONS))
def test_dry_run_expands_the_whole_experiment(capsys, tmp_path, name):
  config, count, varied, fixed = EXPANSIONS[name]
  commands, out = dry_run(capsys, f"--experiment={name}", f"--root={tmp_path}")
  assert sorted(commands) == list(range(count))
  estimators = set()
  names = set()
  for command in commands.values():
    assert flag(command, "config").endswith(config)
    estimator = flag(command, "config.estimator")
    estimators.add(estimator)
    expected_lr = "0.01" if name == "d" else SYNTHETIC_LR[estimator]
    assert flag(command, "config.learning_rate") == expected_lr
    for field, value in fixed.items():
      assert flag(command, f"config.{field}") == value
    for field, values in varied.items():
      assert flag(command, f"config.{field}") in values
    workdir = flag(command, "workdir")
    assert os.path.dirname(workdir) == str(tmp_path)
    names.add(os.path.basename(workdir))
    expected_name = ",".join([f"estimator={estimator}"] + [
        f"{f}={flag(command, 'config.' + f)}" for f in varied])
    assert os.path.basename(workdir) == expected_name
  assert len(names) == count  # One workdir per point.
  assert estimators == ({"vpg_swr", "ca_pg_swr"} if name == "d" else set(SYNTHETIC_LR))
  if name == "d":
    assert "needs --config.env.data_path" in out or "real run needs --config.env.data_path" in out


def test_experiment_c_is_four_joint_pairs_times_four_estimators(capsys, tmp_path):
  commands, _ = dry_run(capsys, "--experiment=c", f"--root={tmp_path}")
  pairs = {(flag(c, "config.num_outputs"), flag(c, "config.num_models"))
           for c in commands.values()}
  assert pairs == {("1", "1"), ("1", "5"), ("5", "1"), ("5", "5")}
  assert len(commands) == 16
  assert os.path.basename(flag(commands[1], "workdir")) == (
      "estimator=vpg,num_outputs=1,num_models=5")
  assert paper_experiments.EXPERIMENTS["c"].facet == ("num_outputs", "num_models")


def test_facets_of_the_experiments():
  assert {n: e.facet for n, e in paper_experiments.EXPERIMENTS.items()} == {
      "a": ("num_candidates",), "b": ("lsr",), "c": ("num_outputs", "num_models"),
      "d": ("num_candidates",)}
  assert paper_experiments.RUNTIME.settings == ((5, 1), (10, 1), (20, 1), (20, 5))


def test_grid_joint_axis_points_values_and_overrides(capsys, tmp_path):
  commands, out = dry_run(
      capsys, "--config=configs/synthetic.py", f"--root={tmp_path}",
      "--grid=estimator=vpg,ca_pg", "--grid=num_outputs+num_models=1+1,5+5",
      "--points=1-2", "--", "--config.num_seeds=3", "--config.learning_rate=0.5")
  assert "4 points" in out and sorted(commands) == [1, 2]
  assert [os.path.basename(flag(c, "workdir")) for c in commands.values()] == [
      "estimator=vpg,num_outputs=5,num_models=5", "estimator=ca_pg,num_outputs=1,num_models=1"]
  for command in commands.values():
    assert flag(command, "config.learning_rate") == "0.5"  # The override wins.
    assert flag(command, "config.num_seeds") == "3"


def test_values_replace_an_experiment_axis(capsys, tmp_path):
  commands, _ = dry_run(capsys, "--experiment=d", f"--root={tmp_path}",
                        "--values=num_candidates=5,10")
  assert len(commands) == 4
  assert {flag(c, "config.num_candidates") for c in commands.values()} == {"5", "10"}


@pytest.mark.parametrize("args, expect", [
    (["--experiment=a", "--grid=estimator=vpg"], "drop --config/--grid"),
    (["--experiment=a", "--values=lsr=noisy"], "has no axis lsr"),
    (["--experiment=e"], "benchmarks/paper_runtime.py"),
    (["--experiment=a", "--points=12"], "outside the sweep's points 0..11"),
    (["--experiment=a", "--points=x"], "0-based indices"),
    (["--experiment=a", "--", "--config.num_candidates=7"], "sweep varies"),
    (["--config=configs/synthetic.py", "--grid=num_outputs+num_models=1+1,5"],
     "joint axis num_outputs+num_models has 2 fields"),
    (["--config=configs/synthetic.py"], "give either --experiment"),
    (["--experiment=d"], "needs --config.env.data_path"),
])
def test_bad_sweep_arguments_exit_2(tmp_path, capsys, args, expect):
  assert sweep.main(with_own_args(args, f"--root={tmp_path}")) == 2
  err = " ".join(capsys.readouterr().err.split())
  assert err.startswith("error: ") and expect in err, err
  assert os.listdir(tmp_path) == []


def run_sweep(*args):
  return subprocess.run([sys.executable, "-m", "cpg_jax.experiments.sweep", *args], cwd=REPO,
                        capture_output=True, text=True)


def check_outputs(root, result, points):
  """Exit 0, metrics in each point's workdir, the plot and the table."""
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in points:
    with open(os.path.join(root, name, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [0, 100, 200]
    assert len(records[-1]["policy_value"]) == 2
  with open(os.path.join(root, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(root, "results.md")) as f:
    table = f.read()
  assert table.startswith("# (")
  assert table.count("| 200 | 2 |") == len(points)  # steps, seeds of each run
  return table


# One point per experiment: (experiment, --points, extra sweep args, its workdir).
END_TO_END = {
    "a": ("0", [], "estimator=vpg,num_candidates=5"),
    "b": ("7", [], "estimator=vpg_swr,lsr=anti"),
    "c": ("15", [], "estimator=ca_pg_swr,num_outputs=5,num_models=5"),
}


# (a) runs by default; (b) and (c) take the same path with other points.
@pytest.mark.parametrize("name", [n if n == "a" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(END_TO_END)])
def test_synthetic_experiment_end_to_end(tmp_path, name):
  points, args, workdir = END_TO_END[name]
  root = str(tmp_path / name)
  result = run_sweep(f"--experiment={name}", f"--root={root}", f"--points={points}", *args,
                     "--", *TINY)
  table = check_outputs(root, result, [workdir])
  assert "have no results yet" in result.stdout and "Not yet run" in table


@pytest.fixture(scope="module")
def kuairec_sweep(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep") / "d")
  publish = os.path.join(os.path.dirname(root), "published", "d")
  args = ["--experiment=d", f"--root={root}", "--values=num_candidates=5,10", "--points=3",
          f"--publish={publish}", "--", f"--config.env.data_path={FIXTURE}", *TINY]
  return root, publish, args, run_sweep(*args)


def test_kuairec_experiment_end_to_end(kuairec_sweep):
  root, publish, _, result = kuairec_sweep
  table = check_outputs(root, result, ["estimator=ca_pg_swr,num_candidates=10"])
  assert "KuaiRec" in table and "CA-PG-SwR" in table
  assert os.path.exists(publish + ".png")
  with open(publish + ".md") as f:
    assert f.read() == table


def test_rerun_keeps_finished_points(kuairec_sweep):
  root, _, args, first = kuairec_sweep
  assert first.returncode == 0
  metrics = os.path.join(root, "estimator=ca_pg_swr,num_candidates=10", "metrics.jsonl")
  with open(metrics) as f:
    before = f.read()
  result = run_sweep(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(metrics) as f:
    assert f.read() == before


def test_paper_runtime_smoke():
  result = subprocess.run(
      [sys.executable, "benchmarks/paper_runtime.py", "--settings=5x1", "--seeds=1",
       "--estimators=ca_pg_swr", "--chunk=10", "--repeats=1"],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| CA-PG-SwR |" in result.stdout and "K=5, L=1" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name, args, count", [
    ("c", [], 16),
    ("d", ["--values=num_candidates=5,10,20", "--", f"--config.env.data_path={FIXTURE}"], 6),
])
def test_whole_experiment_end_to_end(tmp_path, name, args, count):
  root = str(tmp_path / name)
  extra = args if "--" in args else [*args, "--"]
  result = run_sweep(f"--experiment={name}", f"--root={root}", *extra, *TINY)
  points = [d for d in os.listdir(root) if d.startswith("estimator=")]
  assert len(points) == count
  table = check_outputs(root, result, points)
  assert "Not yet run" not in table


TINY_GRID = ["--config=configs/quickstart.py", "--grid=estimator=vpg,ca_pg_swr"]
TINY_POINT = ["--config.num_seeds=1", "--config.eval_contexts=100",
              "--config.env.num_items=100", "--config.env.num_contexts=100"]


def _fake_run(workdir, steps_and_rates, num_steps):
  """config.json and metrics.jsonl of a run that reached the last step given."""
  from cpg_jax.training import metrics_log  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"num_steps": num_steps, "estimator": "ca_pg_swr"}, f)
  log = metrics_log.MetricsLog(workdir)
  for step, rate in steps_and_rates:
    log.append(metrics_log.EvalRecord(step, (5.0,), (5.0,), (0.1,), 9.0, 9.0, (None,), rate))


def test_dry_run_estimates_the_time_from_measured_steps(tmp_path):
  """Point #1 has run 1,000 of its 2,000 steps at 500 steps/s (its
  metrics.jsonl); point #0 is timed by a short run of its own command."""
  root = str(tmp_path)
  _fake_run(os.path.join(root, "estimator=ca_pg_swr"), [(0, 0.0), (1000, 500.0)], 2000)
  result = run_sweep(*TINY_GRID, f"--root={root}", "--dry_run", "--",
                     "--config.num_steps=2000", "--config.eval_every=1000", *TINY_POINT)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  assert "timing point #0" in out and "timing point #1" not in out
  total = re.search(r"^Estimated time on this machine: (\d+)m(\d\d)s for 2 points", out,
                    re.MULTILINE)
  assert total, out
  timed = re.search(r"^  #0 estimator=vpg: (\d+)m(\d\d)s = start-up \d+ s \+ compiling \d+ s "
                    r"\+ 2,000 steps x [\d.]+ ms \+ 3 evaluations x [\d.e-]+ s "
                    r"\(measured on 100 steps\)$", out, re.MULTILINE)
  assert timed, out
  assert ("  #1 estimator=ca_pg_swr: 0m02s (from its metrics.jsonl: 1,000 of 2,000 steps "
          "done at 500 steps/s") in out
  seconds = lambda m: 60 * int(m.group(1)) + int(m.group(2))
  assert abs(seconds(total) - seconds(timed) - 2) <= 1
  assert not os.path.exists(os.path.join(root, "estimator=vpg"))  # Timing writes nothing.


def test_ctrl_c_stops_the_sweep_after_the_point_saved(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  root = str(tmp_path)
  process = subprocess.Popen(
      [sys.executable, "-m", "cpg_jax.experiments.sweep", *TINY_GRID, f"--root={root}", "--",
       "--config.num_steps=100000", "--config.log_every=1000", "--config.eval_every=5000",
       "--config.batch_size=16", *TINY_POINT],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith("step 1000/"):
      break
  process.send_signal(signal.SIGINT)  # As a Ctrl-C in the terminal reaches the sweep.
  output = "".join(lines) + process.communicate(timeout=300)[0]
  assert process.returncode == 130, output[-3000:]
  assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
  assert re.search(r"Ctrl-C \(SIGINT\): saved a checkpoint at step \d+; exiting", output)
  assert "Sweep stopped at point #0" in output and "Resume with:" in output
  assert os.listdir(os.path.join(root, "estimator=vpg", "checkpoints"))
  assert not os.path.exists(os.path.join(root, "estimator=ca_pg_swr"))
