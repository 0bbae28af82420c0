"""Session set-up shared by every test: one XLA compilation cache on disk,
and compilation without LLVM's optimisation passes.

Many tests start `train.py` (or a sweep, or several processes) in a
subprocess, and most of a short run's time is compiling the same training
chunk and evaluation again. The first process to compile a program writes it
to a cache directory made for this pytest session; the others, and the test
workers (pytest-xdist), load it. A cached executable is the compiled program
itself, so results are bit for bit those of a fresh compilation (the golden
runs check this). A JAX_COMPILATION_CACHE_DIR set by the caller is respected
and left in place; the session's own directory is removed at the end.

Most of the suite's time is compiling tiny programs that then run for
milliseconds, so the tests compile with `--xla_backend_optimization_level=0`,
added to XLA_FLAGS (measured on tests/test_plackett_luce.py: 140 s -> 86 s of
CPU). The level changes how fast the machine code runs, not what it is asked
to compute; the golden runs, which compare with files recorded under the
default flags, start train.py without any XLA_ or JAX_ variable.
"""

import os
import shutil
import tempfile

_OWNED = "_CPG_JAX_TEST_OWNS_CACHE_DIR"
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  # Runs in the controller before xdist starts the workers, which (like every
  # subprocess a test starts with os.environ) inherit the variables.
  if hasattr(config, "workerinput"):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if FAST_COMPILE_FLAG not in flags.split():
    os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  directory = tempfile.mkdtemp(prefix="cpg_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  # Cache every program: a short run's chunks compile in well under JAX's
  # default threshold of 1 s each, and there are many of them.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  os.environ[_OWNED] = directory


def pytest_unconfigure(config):
  if hasattr(config, "workerinput"):
    return
  directory = os.environ.pop(_OWNED, None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)
