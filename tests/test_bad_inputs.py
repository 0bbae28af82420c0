"""A corpus of bad inputs: each ends in one clear paragraph and exit code 2.

Every case goes through the command-line front end (`cpg_jax.cli`), in-process
for speed; the few that need absl's flag parsing run `train.py` itself. For
each: the exit code is 2, stderr is one paragraph starting with `error:` that
names the input and contains the expected phrase (what is allowed), there is
no traceback, and the workdir gets no files that were not there before.
"""

import errno
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from cpg_jax.training import cli
from cpg_jax.training import config as config_lib
from cpg_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "kuairec_small_matrix.csv")


def small_config(**overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 30, "env.num_items": 40, "num_candidates": 5, "batch_size": 8,
      "num_steps": 10, "eval_every": 10, "checkpoint_every": 10, "log_every": 10,
      "eval_contexts": 16, "num_seeds": 1, **overrides})


def _files_under(path):
  if not os.path.exists(path):
    return set()
  return {os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs}


def _expect_user_error(capsys, config, workdir, phrases):
  before = _files_under(workdir)
  with pytest.raises(SystemExit) as exit_info:
    cli.run(config, str(workdir))
  err = capsys.readouterr().err
  assert exit_info.value.code == 2
  assert err.startswith("error: "), err
  assert "\n\n" not in err.strip() and "Traceback" not in err, err
  flat = " ".join(err.split())
  for phrase in phrases:
    assert phrase in flat, f"{phrase!r} not in {flat!r}"
  assert _files_under(workdir) <= before, "partial files were left behind"


CONFIG_CASES = [
    ("K > N", {"num_candidates": 41}, ["config.num_candidates", "<= the number of items (N=40)"]),
    ("L > K", {"num_outputs": 6}, ["config.num_outputs", "<= 5"]),
    ("M > K", {"num_models": 6}, ["config.num_models", "<= 5"]),
    ("K zero", {"num_candidates": 0}, ["config.num_candidates", ">= 1"]),
    ("K negative", {"num_candidates": -3}, ["config.num_candidates", ">= 1"]),
    ("L zero", {"num_outputs": 0}, ["config.num_outputs", ">= 1"]),
    ("batch zero", {"batch_size": 0}, ["config.batch_size", ">= 1"]),
    ("batch negative", {"batch_size": -8}, ["config.batch_size", ">= 1"]),
    ("steps zero", {"num_steps": 0}, ["config.num_steps", ">= 1"]),
    ("eval_every zero", {"eval_every": 0}, ["config.eval_every", ">= 1"]),
    ("checkpoint_every negative", {"checkpoint_every": -1}, ["config.checkpoint_every"]),
    ("no seeds", {"num_seeds": 0}, ["config.num_seeds", ">= 1"]),
    ("negative seed", {"seed": -1}, ["config.seed", ">= 0"]),
    ("negative lr", {"learning_rate": -0.1}, ["config.learning_rate", "> 0.0"]),
    ("zero lr", {"learning_rate": 0.0}, ["config.learning_rate", "> 0.0"]),
    ("NaN lr", {"learning_rate": float("nan")}, ["config.learning_rate", "got nan"]),
    ("unknown estimator", {"estimator": "reinforce"},
     ["config.estimator", "vpg, vpg_swr, ca_pg, ca_pg_swr", "'reinforce'"]),
    ("unknown optimizer", {"optimizer": "lbfgs"}, ["config.optimizer", "adagrad", "'lbfgs'"]),
    ("unknown lsr", {"lsr": "random"}, ["config.lsr", "optimal, noisy, uniform, anti"]),
    ("unknown schedule", {"lr_schedule": "step"}, ["config.lr_schedule", "constant"]),
    ("unknown position weights", {"position_weights": "exp"}, ["config.position_weights", "mean"]),
    ("unknown environment", {"env.name": "netflix"}, ["config.env.name", "synthetic, kuairec"]),
    ("zero temperature", {"lsr_temperature": 0.0}, ["config.lsr_temperature", "> 0.0"]),
    ("epsilon above 1", {"lsr_epsilon": 1.5}, ["config.lsr_epsilon", "<= 1.0"]),
    ("zero items", {"env.num_items": 0}, ["config.env.num_items", ">= 1"]),
    ("negative reward scale", {"env.reward_scale": -1.0}, ["config.env.reward_scale", "> 0.0"]),
    ("zero embedding", {"embedding_dim": 0}, ["config.embedding_dim", ">= 1"]),
    ("zero eval contexts", {"eval_contexts": 0}, ["config.eval_contexts", ">= 1"]),
    ("string batch", {"batch_size": "128"}, ["config.batch_size", "integer"]),
    ("kuairec without data", {"env.name": "kuairec"}, ["config.env.data_path", "is required"]),
]


@pytest.mark.parametrize("overrides, phrases",
                         [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(tmp_path, capsys, overrides, phrases):
  # Through a plain dict, so that values of the wrong type can be set too.
  values = config_lib.apply_overrides(small_config().to_dict(), overrides)
  workdir = tmp_path / "run"
  _expect_user_error(capsys, ml_collections.ConfigDict(values), workdir, phrases)
  assert not workdir.exists()


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


KUAIREC_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio\n"


def _data_cases(tmp_path):
  npy_nan = str(tmp_path / "nan.npy")
  np.save(npy_nan, np.array([[1.0, np.nan], [0.5, 0.2]]))
  npy_1d = str(tmp_path / "flat.npy")
  np.save(npy_1d, np.arange(5.0))
  return {
      "missing kuairec file": ("kuairec", str(tmp_path / "nope.csv"), ["nope.csv", "not found"]),
      "empty kuairec file": ("kuairec", _write(tmp_path / "empty.csv", ""), ["empty.csv", "empty"]),
      "header only": ("kuairec", _write(tmp_path / "header.csv", KUAIREC_HEADER),
                      ["header.csv"]),
      "no watch_ratio column": (
          "kuairec", _write(tmp_path / "cols.csv", "user_id,video_id,ratio\n1,2,0.5\n"),
          ["cols.csv", "watch_ratio"]),
      "non-numeric watch_ratio": (
          "kuairec", _write(tmp_path / "text.csv",
                            KUAIREC_HEADER + "1,2,3,4,5,6,7,0.5\n1,3,3,4,5,6,7,lots\n"),
          ["text.csv", "line 3"]),
      "negative id": (
          "kuairec", _write(tmp_path / "neg.csv",
                            KUAIREC_HEADER + "1,2,3,4,5,6,7,0.5\n-4,3,3,4,5,6,7,0.1\n"),
          ["neg.csv", "negative"]),
      "NaN in matrix": ("matrix", npy_nan, ["nan.npy"]),
      "1-D matrix": ("matrix", npy_1d, ["flat.npy", "2-D"]),
      "unknown extension": ("matrix", _write(tmp_path / "m.parquet", "x"), ["m.parquet"]),
      "missing matrix": ("matrix", str(tmp_path / "none.npy"), ["none.npy", "not found"]),
  }


DATA_CASE_NAMES = ["missing kuairec file", "empty kuairec file", "header only",
                   "no watch_ratio column", "non-numeric watch_ratio", "negative id",
                   "NaN in matrix", "1-D matrix", "unknown extension", "missing matrix"]


@pytest.mark.parametrize("case", DATA_CASE_NAMES)
def test_bad_data_file(tmp_path, capsys, case):
  env_name, path, phrases = _data_cases(tmp_path)[case]
  config = small_config(**{"env.name": env_name, "env.data_path": path})
  workdir = tmp_path / "run"
  _expect_user_error(capsys, config, workdir, phrases)
  assert not workdir.exists()


def test_duplicated_pairs_are_accepted_keeping_the_last(tmp_path):
  """docs/method.md §5.2 says: duplicates keep the last entry, and say so."""
  from cpg_jax.environments import load_kuairec_matrix
  path = _write(tmp_path / "dup.csv", KUAIREC_HEADER
                + "1,2,3,4,5,6,7,0.5\n1,2,3,4,5,6,7,0.7\n2,2,3,4,5,6,7,0.1\n")
  matrix, _, _ = load_kuairec_matrix(path)
  assert matrix[0, 0] == pytest.approx(0.7)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("done"))
  loop.train_and_evaluate(small_config(), workdir, log=lambda _: None)
  return workdir


def test_foreign_checkpoint(tmp_path, capsys):
  workdir = tmp_path / "run"
  step_dir = workdir / "checkpoints" / "5"
  os.makedirs(step_dir)
  _write(step_dir / "weights.bin", "not an orbax checkpoint")
  _write(step_dir / "_CHECKPOINT_METADATA", "{}")
  with pytest.raises(SystemExit) as exit_info:
    cli.run(small_config(), str(workdir))
  err = " ".join(capsys.readouterr().err.split())
  assert exit_info.value.code == 2
  assert "no intact checkpoint" in err and "damaged_checkpoints" in err, err
  assert not (workdir / "metrics.jsonl").exists()


def test_truncated_only_checkpoint(tmp_path, capsys, finished_run):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  data = [p for p in _files_under(workdir / "checkpoints") if "/d/" in p]
  for p in data:
    with open(p, "r+b") as f:
      f.truncate(max(os.path.getsize(p) // 2, 1))
  with pytest.raises(SystemExit) as exit_info:
    cli.run(small_config(), str(workdir))
  err = " ".join(capsys.readouterr().err.split())
  assert exit_info.value.code == 2 and "no intact checkpoint" in err, err


def test_incompatible_checkpoint_names_fields(tmp_path, capsys, finished_run):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  _expect_user_error(capsys, small_config(estimator="vpg", batch_size=16), workdir,
                     ["estimator: 'ca_pg_swr' -> 'vpg'", "batch_size: 8 -> 16",
                      "new --workdir"])


def test_workdir_is_a_file(tmp_path, capsys):
  path = _write(tmp_path / "file", "x")
  _expect_user_error(capsys, small_config(), path, ["workdir", "is not usable"])


def test_workdir_full(tmp_path, capsys, monkeypatch):
  real_open = open

  def full_open(path, mode="r", *args, **kwargs):
    if "w" in mode and ".write_probe" in str(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr("builtins.open", full_open)
  _expect_user_error(capsys, small_config(), tmp_path / "run",
                     ["workdir", "No space left on device"])


CLI_CASES = [
    ("--config.num_candidates=abc", ["--config.num_candidates=abc", "invalid literal"]),
    ("--config.learning_rate=fast", ["--config.learning_rate=fast"]),
    ("--config.env.shared_key=maybe", ["--config.env.shared_key=maybe", "boolean"]),
    ("--config.no_such=1", ["unknown config field 'no_such'", "Top-level fields"]),
    # Named as typed, with the close matches among the env.* fields.
    ("--config.num_candidate=5", ["unknown config field 'num_candidate' in "
                                  "--config.num_candidate=5", "Did you mean "
                                  "--config.num_candidates?", "Top-level fields"]),
    ("--config.env.num_item=5", ["unknown config field 'env.num_item' in "
                                 "--config.env.num_item=5", "Did you mean "
                                 "--config.env.num_items", "Fields of config.env: cache_dir"]),
    ("--config.K=5", ["Did you mean --config.num_candidates?"]),
    ("--config=configs/missing.py", ["configs/missing.py", "No such file"]),
]


@pytest.mark.parametrize("argument, phrases", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line(tmp_path, argument, phrases):
  workdir = tmp_path / "run"
  args = [sys.executable, os.path.join(REPO, "train.py"), f"--workdir={workdir}"]
  if not argument.startswith("--config="):
    args.append("--config=configs/quickstart.py")
  result = subprocess.run(args + [argument], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO})
  err = " ".join(result.stderr.split())
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: " in err and "Traceback" not in err, err
  assert "\\" not in err, err  # No escaped quoting.
  for phrase in phrases:
    assert phrase in err, err
  assert not workdir.exists()
