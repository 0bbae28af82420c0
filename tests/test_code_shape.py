"""The shape of the code: layers import one way, file tools import no JAX,
functions stay short.

See docs/architecture.md for the layers.
"""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "cpg_jax")

# A module of each layer may import the project modules of its own layer and
# of the layers after it only (`kernels/` is the top-level kernel package).
LAYERS = ("experiments", "training", "environments", "kernels", "numerics")
# The longest function body (docstring excluded) outside tests.
MAX_FUNCTION_LINES = 60


def _python_files(*roots):
  for root in roots:
    path = os.path.join(REPO, root)
    if os.path.isfile(path):
      yield path
      continue
    for directory, _, names in os.walk(path):
      yield from (os.path.join(directory, n) for n in names if n.endswith(".py"))


def _project_imports(path):
  """The project modules (`cpg_jax...`, `kernels...`) a file imports, at any
  depth of the file."""
  tree = ast.parse(open(path).read())
  ours = lambda name: name.split(".")[0] in ("cpg_jax", "kernels")
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names if ours(alias.name))
    elif isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _layer(module):
  parts = module.split(".")
  if parts[0] == "kernels":
    return "kernels"
  return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_layers_import_one_way():
  wrong = []
  for path in _python_files("cpg_jax", "kernels"):
    relative = os.path.relpath(path, REPO)
    own = _layer(relative[:-3].replace(os.sep, "."))
    if own is None:
      continue
    allowed = set(LAYERS[LAYERS.index(own):])
    for module in _project_imports(path):
      layer = _layer(module)
      if layer is not None and layer not in allowed:
        wrong.append(f"{relative} imports {module}")
  assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_numerics_never_see_a_config_dict():
  for path in _python_files("cpg_jax/numerics", "cpg_jax/environments", "kernels"):
    for node in ast.walk(ast.parse(open(path).read())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.startswith("ml_collections") for n in names), path


def test_file_tools_import_without_jax():
  """The report, the sweep runner and the paper table, in a fresh interpreter."""
  code = ("import sys\n"
          "import cpg_jax.experiments.report, cpg_jax.experiments.sweep, "
          "cpg_jax.experiments.paper, cpg_jax.experiments.runs, cpg_jax.experiments.plots, "
          "cpg_jax.experiments.estimate, cpg_jax.experiments.paper_figure\n"
          "import cpg_jax.training.metrics_log, cpg_jax.training.config, cpg_jax.training.timing, "
          "cpg_jax.training.interrupts, cpg_jax.training.logging_setup\n"
          "heavy = sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'matplotlib')"
          " if m in sys.modules)\n"
          "print(','.join(heavy))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


def test_public_api_loads_lazily():
  code = ("import sys, cpg_jax\n"
          "before = 'jax' in sys.modules\n"
          "fn = cpg_jax.train_and_evaluate\n"
          "print(before, 'jax' in sys.modules, callable(fn), len(cpg_jax.__all__))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
  before, after, is_callable, count = result.stdout.split()
  assert (before, after, is_callable) == ("False", "True", "True")
  assert 10 <= int(count) <= 40  # a short list a user can read in one screen


@pytest.mark.parametrize("root", ["cpg_jax", "kernels", "benchmarks", "configs", "train.py"])
def test_no_long_functions(root):
  long = []
  for path in _python_files(root):
    for node in ast.walk(ast.parse(open(path).read())):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      lines = node.end_lineno - node.lineno + 1
      docstring = ast.get_docstring(node, clean=False)
      if docstring is not None:
        lines -= node.body[0].end_lineno - node.body[0].lineno + 1
      # A docstring may say why a function must stay long.
      if lines > MAX_FUNCTION_LINES and "Long because" not in (docstring or ""):
        long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, "functions over the limit:\n" + "\n".join(long)
