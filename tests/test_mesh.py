"""The device mesh from config: resolution, refusals before compiling, and
train.py's message for a mesh that does not fit (single-device process; the
sharded programs themselves are tested in tests/test_multi_device.py)."""

import os
import subprocess
import sys

import pytest

from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("seeds, items, devices, num_seeds, want", [
    (0, 0, 8, 8, (8, 1)),    # all devices on seeds when num_seeds allows
    (0, 0, 8, 3, (1, 8)),    # else on items
    (0, 0, 8, 2, (2, 4)),    # as many as divide both
    (0, 0, 1, 10, (1, 1)),
    (2, 0, 8, 4, (2, 4)),    # one axis given: the other takes the rest
    (0, 2, 8, 4, (4, 2)),
    (1, 8, 8, 5, (1, 8)),
])
def test_resolve(seeds, items, devices, num_seeds, want):
  shape = mesh_lib.resolve(seeds, items, devices, num_seeds)
  assert (shape.seeds, shape.items) == want


@pytest.mark.parametrize("seeds, items, devices, num_seeds, phrases", [
    (2, 2, 8, 4, ["2 x 2 = 4 devices, but this run has 8", "1 x 8, 2 x 4, 4 x 2"]),
    (0, 3, 8, 4, ["mesh.item_shards=3 does not divide the 8 devices"]),
    (3, 0, 8, 3, ["mesh.seeds=3 does not divide the 8 devices"]),
    (4, 2, 8, 6, ["num_seeds=6 does not divide evenly over config.mesh.seeds=4",
                  "1 x 8, 2 x 4"]),
    (-1, 0, 8, 4, ["config.mesh.seeds must be an integer >= 0"]),
])
def test_resolve_refuses_with_what_would_fit(seeds, items, devices, num_seeds, phrases):
  with pytest.raises(ConfigError) as error:
    mesh_lib.resolve(seeds, items, devices, num_seeds)
  for phrase in phrases:
    assert phrase in str(error.value), str(error.value)


@pytest.mark.parametrize("estimator, noise, kernel, phrase", [
    ("vpg", "threefry", "xla", "noise_generator='threefry' cannot be sharded"),
    ("ca_pg", "hash", "pallas", "top_k_kernel='pallas' runs on one device"),
])
def test_item_sharding_refuses_what_it_cannot_run(estimator, noise, kernel, phrase):
  with pytest.raises(ConfigError, match=phrase):
    mesh_lib.check_supported(4, estimator, noise, kernel)
  # The same choices are fine when the catalogue is not sharded.
  mesh_lib.check_supported(1, estimator, noise, kernel)


def _train(*args):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                         "--config=configs/quickstart.py", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=180,
                        env={**env, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("args, phrase", [
    (["--config.mesh.seeds=3"], "config.mesh.seeds=3 does not divide the 4 devices"),
    (["--config.mesh.seeds=2", "--config.mesh.item_shards=1"],
     "config.mesh is 2 x 1 = 2 devices, but this run has 4"),
    (["--config.num_seeds=3", "--config.mesh.seeds=4"],
     "config.num_seeds=3 does not divide evenly over config.mesh.seeds=4"),
])
def test_train_refuses_a_mesh_that_does_not_fit_before_compiling(tmp_path, args, phrase):
  result = _train(f"--workdir={tmp_path / 'run'}", "--cpu_devices=4", *args)
  err = " ".join(result.stderr.split())
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
  assert phrase in err and "Traceback" not in err, err
  assert "Compiled" not in result.stdout, result.stdout
