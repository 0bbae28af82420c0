"""What train.py prints: our lines without library log noise; help and config.

The quickstart runs in a subprocess for a few hundred steps with a checkpoint
every 100 (Orbax logs about 45 INFO lines per save unless they are hidden);
its stdout and stderr must hold no absl-formatted log line and no "Unable to
initialize backend", and must hold the startup lines, the step-0 evaluation
and the other evaluations. `-v 0` brings the library logs back.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cpg_jax.training import config as config_lib
from cpg_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's format: "I1201 11:26:58.492796 140603859983232 file.py:701] ..."
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\]", re.MULTILINE)
SHORT_RUN = ["--config.num_steps=300", "--config.eval_every=100", "--config.log_every=100",
             "--config.checkpoint_every=100", "--config.eval_contexts=200",
             "--config.num_seeds=2"]


def _train(*args, timeout=600):
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "PYTHONPATH": REPO})


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("quickstart"))
  result = _train("--config=configs/quickstart.py", f"--workdir={workdir}", "--noplot",
                  *SHORT_RUN)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir, result


def test_no_library_info_lines(quickstart):
  """Warnings would still show (none here on a CPU machine)."""
  _, result = quickstart
  for stream in (result.stdout, result.stderr):
    info = [line for line in ABSL_LINE.findall(stream) if line.startswith("I")]
    assert not info, info[:3]
    assert "Unable to initialize backend" not in stream
    assert "orbax" not in stream.lower()


def test_startup_lines_and_every_evaluation_printed(quickstart):
  workdir, result = quickstart
  out = result.stdout
  assert out.startswith("Config: checkpoint_every=100, eval_contexts=200, eval_every=100, "
                        "log_every=100, num_seeds=2, num_steps=300\n"), out[:500]
  assert f"Starting fresh at step 0 (no checkpoint in {workdir}/checkpoints)." in out
  assert re.search(r"^Compiled in \d+\.\d s\.$", out, re.MULTILINE)
  assert re.findall(r"^  eval step (\d+):", out, re.MULTILINE) == ["0", "100", "200", "300"]
  progress = re.findall(r"^step (\d+)/300 \| [\d,]+ steps/s \| ETA \d+m\d\ds \|", out,
                        re.MULTILINE)
  assert progress == ["100", "200", "300"]


def test_verbosity_flag_brings_the_library_logs_back(quickstart):
  workdir, _ = quickstart
  result = _train("--config=configs/quickstart.py", f"--workdir={workdir}", "--noplot",
                  "-v", "0", *SHORT_RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 300 " in result.stdout
  assert ABSL_LINE.search(result.stderr), result.stderr[-2000:]  # Orbax's restore, at INFO.


def _write_udata(path, users=30, items=40, seed=0):
  rng = np.random.default_rng(seed)
  lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + n}"
           for n, (u, i) in enumerate((u, i) for u in range(1, users + 1)
                                      for i in range(1, items + 1) if rng.random() < 0.5)]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_movielens_fit_report_is_our_own_line(tmp_path):
  data = _write_udata(tmp_path / "u.data")
  result = _train("--config=configs/movielens.py:K=5", f"--workdir={tmp_path / 'run'}",
                  "--noplot", f"--config.env.data_path={data}",
                  f"--config.env.cache_dir={tmp_path / 'cache'}", "--config.num_steps=10",
                  "--config.eval_every=10", "--config.log_every=10",
                  "--config.eval_contexts=20", "--config.num_seeds=1")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert re.search(r"^MovieLens ratings .*u\.data \(u\.data\): \d+ ratings", result.stdout,
                   re.MULTILINE), result.stdout[:2000]
  assert re.search(r"^Completed by biased ALS .* held-out RMSE", result.stdout, re.MULTILINE)
  assert not [l for l in ABSL_LINE.findall(result.stdout + result.stderr) if l[0] == "I"]


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
  result = _train("--config=configs/synthetic.py:estimator=vpg,K=20", "--print_config",
                  "--config.env.num_items=500")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  values = dict(line.split(" = ", 1) for line in lines if not line.startswith("#"))
  flat = config_lib.flatten_config(config_lib.default_config())
  assert set(values) == set(flat)  # Every field, once.
  assert values["estimator"] == "'vpg'  # default 'ca_pg_swr'"
  assert values["num_candidates"] == "20  # default 10"
  assert values["env.num_items"] == "500  # default 1000"
  assert values["learning_rate"] == "0.1  # default 0.01"  # The paper's V-PG rate.
  assert values["batch_size"] == "128"
  assert not os.listdir(tmp_path)  # Nothing written, no workdir needed.


def test_help_says_where_every_field_is_documented():
  result = _train("--help")  # absl's --help exits with 1.
  text = " ".join(result.stdout.split())
  for topic, fields, where in config_lib.FIELD_DOCS:
    assert " ".join(where.split()) in text, where
    for field in fields:
      assert re.search(rf"(^|[ ,]){re.escape(field)}(,|$| )", text), field
  assert "--print_config" in text and "--estimate_time" in text and "-v 0" in text


def test_readme_lists_where_every_field_is_documented():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  for _, fields, where in config_lib.FIELD_DOCS:
    for field in fields:
      assert f"`{field}`" in readme, field
    for place in where.split("; "):
      assert place.split(" (")[0].split(" §")[0] in readme, place


def test_estimate_time_measures_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = _train("--config=configs/quickstart.py", f"--workdir={workdir}", "--estimate_time",
                  "--config.num_steps=5000", "--config.eval_every=1000",
                  "--config.num_seeds=1", "--config.eval_contexts=100")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Estimated time of this run on this machine: " in result.stdout
  line = next(l for l in result.stdout.splitlines() if l.startswith("Timing (JSON): "))
  timing = json.loads(line[len("Timing (JSON): "):])
  assert timing["num_steps"] == 5000 and timing["num_evaluations"] == 6
  assert timing["measured_steps"] == 100
  for field in ("startup_seconds", "compile_seconds", "step_seconds", "eval_seconds"):
    assert timing[field] > 0, field
  assert not workdir.exists()


def test_no_compilation_once_training_starts(tmp_path):
  """The chunk lengths and the evaluation are compiled before the clock of
  the progress lines starts, so steps/s and the ETA leave compiling out."""
  import jax  # pylint: disable=g-import-not-at-top
  from tests.test_trainer import tiny_config  # pylint: disable=g-import-not-at-top
  events, marks = [], []
  listener = lambda name, seconds, **kwargs: events.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # Boundaries 10, 20, 25: chunks of 10 and 5 steps.
    loop.train_and_evaluate(tiny_config(num_steps=25, eval_every=10, log_every=10,
                                        checkpoint_every=20), str(tmp_path),
                            log=lambda message: marks.append((message, len(events))))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  compiled_at = next(n for m, n in marks if m.startswith("Compiled in"))
  assert any("compile" in name for name in events[:compiled_at])
  late = [name for name in events[compiled_at:] if "backend_compile" in name]
  assert late == [], late
