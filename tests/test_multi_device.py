"""Runs tests/multi_device_cases.py in a subprocess that sees 8 CPU devices.

`XLA_FLAGS=--xla_force_host_platform_device_count=8` only takes effect before
JAX starts, and this pytest process has started it with one device, so the
cases run in a child pytest. The default suite runs the lean cases: the
2 x 4 and 1 x 8 meshes at N = 64, which divides by the shards; every
estimator on a 2 x 4 mesh at N = 61, which does not; the item-blocked path
inside the shards; V-PG's and CA-PG's gradients against one device, CA-PG's
against float64 finite differences. `-m slow` adds the 4 x 2 mesh, the
estimators at N = 64, the multi-model and uniform-LSR paths, the SwR
estimators' gradients, V-PG's finite differences, ca_pg_exact / ca_pg_ss on
a seed mesh, a grouped leave-one-out baseline on an item mesh, and the full
product of estimator x N x mesh.
"""

import os
import pathlib
import subprocess
import sys

import pytest

CASES = pathlib.Path(__file__).with_name("multi_device_cases.py")


def _run_cases(marker):
  # Keeps the flags the suite set (tests/conftest.py) beside the device count.
  flags = os.environ.get("XLA_FLAGS", "")
  env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
       str(CASES)], cwd=CASES.parent.parent, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
  # The child must have run cases, not merely collected none.
  assert " passed" in result.stdout, result.stdout[-2000:]


def test_multi_device_cases_on_eight_cpu_devices():
  _run_cases("not slow")


@pytest.mark.slow
def test_multi_device_full_product_on_eight_cpu_devices():
  _run_cases("slow")
