"""Real-data environment: a dense user x item reward matrix (docs/method.md §5.2).

The published real-data setting is KuaiRec's `small_matrix.csv` (1,411 users x
3,327 videos, almost fully observed), pivoted to a dense matrix Q of clipped
watch ratios. Any other dense reward matrix (.npy or .csv) loads the same way.

  contexts: the users, drawn uniformly
  q(u, a) = Q[u, a]                          (what the late-stage rankers see)
  E[r]    = q(u, a)
  r       = q(u, a) * (1 + eps),  eps ~ N(0, noise_std^2)   (noise_std = 0.3)

The user supplies the file; nothing is downloaded. Every problem with a file
raises `DataFileError`, whose message names the file (and the line, for a bad
value).
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import os
import warnings

import chex
from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cpg_jax.environments import base
from cpg_jax.environments.errors import DataFileError
from cpg_jax.numerics.sharding import ItemShards

_logger = logging.getLogger(__name__)

KUAIREC_COLUMNS = ('user_id', 'video_id', 'watch_ratio')
_MAX_EXACT_ID = 2**53  # ids are parsed as float64: exact up to here
_MAX_SIZE = 2**31 - 1  # ids are int32 inside the environment


@struct.dataclass
class RewardMatrixEnvironment(base.Environment):
  """A dense reward matrix as an environment.

  Build it with `make_reward_matrix_environment` or
  `make_kuairec_environment`; the constructor does no checks.

  Leaves:
    matrix: float32 `[users, items]`, Q. q(u, a) = Q[u, a] = E[r | u, a].
    noise_std: float32 scalar, the std of the multiplicative noise eps.

  Static fields:
    num_contexts: number of users (context ids are the dense user indices).
    num_items: number of items.
    item_shards: None, or how the matrix's columns are cut over a mesh axis
      inside `shard_map` (`numerics.sharding`).
  """

  # The leaves indexed by item id, and the axis of each that is the item axis.
  ITEM_AXES = {'matrix': 1}

  matrix: jax.Array
  num_contexts: int = struct.field(pytree_node=False)
  num_items: int = struct.field(pytree_node=False)
  noise_std: jax.Array | float = 0.3
  item_shards: ItemShards | None = struct.field(pytree_node=False, default=None)

  def sample_contexts(self, key: jax.Array, batch_size: int) -> jax.Array:
    """Draws user ids uniformly. Returns int32 `[batch]`."""
    return jax.random.randint(
        key, (batch_size,), 0, self.num_contexts, dtype=jnp.int32
    )

  def expected_score(
      self, context_ids: jax.Array, item_ids: jax.Array
  ) -> jax.Array:
    """q(u, a) = Q[u, a].

    Args:
      context_ids: int `[batch]`.
      item_ids: int `[batch, n]`.
    Returns:
      float32 `[batch, n]`.
    """
    chex.assert_rank(context_ids, 1)
    chex.assert_rank(item_ids, 2)
    chex.assert_type([context_ids, item_ids], int)
    chex.assert_axis_dimension(item_ids, 0, context_ids.shape[0])
    if self.item_shards is not None:
      return self.item_shards.gather_columns(self.matrix, context_ids, item_ids)
    return self.matrix[context_ids[:, None], item_ids]

  def mean_reward(self, context_ids: jax.Array, item_ids: jax.Array) -> jax.Array:
    """E[r | u, a] = Q[u, a]. Shapes as `expected_score`."""
    return self.expected_score(context_ids, item_ids)

  def sample_reward(
      self, key: jax.Array, context_ids: jax.Array, item_ids: jax.Array
  ) -> jax.Array:
    """r = Q[u, a] * (1 + eps), eps ~ N(0, noise_std^2), one per pair.

    Args:
      key: PRNG key, consumed.
      context_ids: int `[batch]`.
      item_ids: int `[batch, n]`.
    Returns:
      float32 `[batch, n]`. Not clipped: with noise_std = 0.3 a draw is
      negative with probability P(eps < -1) ~ 4e-4 (for Q > 0).
    """
    q = self.expected_score(context_ids, item_ids)
    eps = jax.random.normal(key, q.shape, q.dtype)
    return q * (1.0 + self.noise_std * eps)

  def expected_score_all(self, context_ids: jax.Array) -> jax.Array:
    """The rows of Q. int `[batch]` -> float32 `[batch, items]`."""
    chex.assert_rank(context_ids, 1)
    chex.assert_type(context_ids, int)
    return self.matrix[context_ids]

  def optimal_items(self, context_ids: jax.Array, k: int) -> jax.Array:
    """Top-k items of each gathered row of Q, best first (ties: lower id).

    Dense: the matrix itself is held in memory, so one row per context is too.

    Args:
      context_ids: int `[batch]`.
      k: static, 1 <= k <= num_items.
    Returns:
      int32 `[batch, k]`.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
      raise ValueError(f'k must be a Python integer, got {k!r}')
    if not 1 <= k <= self.num_items:
      raise ValueError(f'k must be in [1, num_items={self.num_items}], got {k}')
    shards, q = self.item_shards, self.expected_score_all(context_ids)
    if shards is None:
      _, ids = lax.top_k(q, int(k))
      return ids.astype(jnp.int32)
    global_ids = shards.global_ids()
    values, ids = lax.top_k(jnp.where(global_ids < self.num_items, q, -jnp.inf),
                            min(int(k), shards.local_size))
    return shards.merge_top_k(values, global_ids[ids], int(k))[1]


# ----------------------------------------------------------------- builders --


def check_noise_std(noise_std) -> float:
  if (
      isinstance(noise_std, (bool, np.bool_))
      or not isinstance(noise_std, numbers.Real)
      or not math.isfinite(noise_std)
      or noise_std < 0
  ):
    raise ValueError(f'noise_std must be a finite number >= 0, got {noise_std!r}')
  return float(noise_std)


def make_reward_matrix_environment(
    matrix, noise_std: float = 0.3
) -> RewardMatrixEnvironment:
  """Wraps a dense reward matrix as an environment.

  Args:
    matrix: `[users, items]` finite real numbers (NumPy or JAX array, or
      anything `np.asarray` takes); stored as float32. The CA-family
      estimators need rewards >= 0, so a matrix with negative entries is
      accepted with a logged warning.
    noise_std: std of the multiplicative reward noise, finite, >= 0.
  Returns:
    A `RewardMatrixEnvironment`.
  Raises:
    ValueError: the matrix is not a non-empty 2-D finite real array, or
      noise_std is out of range.
  """
  noise_std = check_noise_std(noise_std)
  a = np.asarray(matrix)
  if a.ndim != 2:
    raise ValueError(f'matrix must be 2-D [users, items], got shape {a.shape}')
  if a.shape[0] < 1 or a.shape[1] < 1:
    raise ValueError(f'matrix must be non-empty, got shape {a.shape}')
  if a.shape[0] > _MAX_SIZE or a.shape[1] > _MAX_SIZE:
    raise ValueError(f'matrix dimensions must be < 2**31, got shape {a.shape}')
  if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
          or a.dtype == np.bool_):
    raise ValueError(f'matrix must hold real numbers, got dtype {a.dtype}')
  a = a.astype(np.float32)
  if not np.isfinite(a).all():
    raise ValueError('matrix must be finite (no NaN / inf, also after float32 '
                     'conversion)')
  if (a < 0).any():
    _logger.warning(
        'reward matrix has %d negative entries (min %g); the CA-family '
        'estimators assume rewards >= 0', int((a < 0).sum()), float(a.min()))
  return RewardMatrixEnvironment(
      matrix=jnp.asarray(a),
      num_contexts=int(a.shape[0]),
      num_items=int(a.shape[1]),
      noise_std=jnp.asarray(noise_std, jnp.float32),
  )


def make_kuairec_environment(
    path: str | os.PathLike[str],
    noise_std: float = 0.3,
    clip_max: float | None = 10.0,
) -> RewardMatrixEnvironment:
  """A KuaiRec `small_matrix.csv` as an environment.

  See `load_kuairec_matrix` for the file format and preprocessing.
  """
  noise_std = check_noise_std(noise_std)
  matrix, _, _ = load_kuairec_matrix(path, clip_max=clip_max)
  return make_reward_matrix_environment(matrix, noise_std=noise_std)


# ------------------------------------------------------------------ loaders --


def check_data_file(path: str) -> None:
  if not os.path.exists(path):
    raise DataFileError(path, 'file not found')
  if not os.path.isfile(path):
    raise DataFileError(path, 'is not a regular file')
  if os.path.getsize(path) == 0:
    raise DataFileError(path, 'is empty (0 bytes)')


def read_first_line(path: str) -> str:
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      return f.readline()
  except UnicodeDecodeError as err:
    raise DataFileError(path, f'is not UTF-8 text ({err})') from err


def first_appearance(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense indices in order of first appearance.

  Args:
    ids: int64 `[rows]`.
  Returns:
    (unique ids in first-appearance order `[n]`, dense index of each row
    `[rows]`).
  """
  uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
  order = np.argsort(first, kind='stable')
  rank = np.empty(len(uniq), np.int64)
  rank[order] = np.arange(len(uniq))
  return uniq[order], rank[inverse.reshape(-1)]


def _kuairec_columns(path: str) -> tuple[int, int, int]:
  """Validates the header and returns the column indices of KUAIREC_COLUMNS."""
  first = read_first_line(path)
  if not first.strip():
    raise DataFileError(path, 'is empty (no header line)')
  header = [name.strip() for name in next(csv.reader([first]))]
  indices = []
  for name in KUAIREC_COLUMNS:
    where = [i for i, h in enumerate(header) if h == name]
    if not where:
      raise DataFileError(
          path,
          f'missing required column {name!r}; columns found: {header} '
          f'(required: {list(KUAIREC_COLUMNS)})',
      )
    if len(where) > 1:
      raise DataFileError(path, f'column {name!r} appears {len(where)} times '
                          f'in the header {header}')
    indices.append(where[0])
  return tuple(indices)


def parse_finite(name: str, text: str) -> tuple[float | None, str | None]:
  """(value, None) for a finite number's text, else (None, the problem)."""
  try:
    value = float(text)
  except ValueError:
    return None, f'{name} value {text!r} is not a number'
  if not math.isfinite(value):
    return None, f'{name} value {text!r} is not a finite number'
  return value, None


def _check_kuairec_value(name: str, text: str) -> str | None:
  """The problem with one field's text, or None. Same rules as the fast path."""
  value, problem = parse_finite(name, text)
  if problem:
    return problem
  return None if name == 'watch_ratio' else id_problem(name, text, value)


def id_problem(name: str, text: str, value: float) -> str | None:
  """The problem with an id field (a finite number), or None: ids are
  non-negative integers up to 2**53 (exact in float64)."""
  if value != math.floor(value):
    return f'{name} value {text!r} is not an integer (ids must be integers)'
  if value < 0:
    return f'negative {name} {text!r} (ids must be >= 0)'
  if value > _MAX_EXACT_ID:
    return f'{name} value {text!r} is too large (ids must be <= 2**53)'
  return None


def _locate_kuairec_problem(path: str, columns: tuple[int, int, int]) -> None:
  """Slow scan with the csv module that raises at the first bad line.

  Only run after the vectorised parse has failed or found a bad value, to turn
  that into a message with a line number (line 1 is the header).
  """
  need = max(columns) + 1
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      next(reader, None)
      for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
          continue  # blank line, skipped by the fast path too
        if len(row) < need:
          raise DataFileError(
              path, f'line {reader.line_num}: has {len(row)} fields, needs at '
              f'least {need} to reach the required columns')
        for name, col in zip(KUAIREC_COLUMNS, columns):
          problem = _check_kuairec_value(name, row[col].strip())
          if problem:
            raise DataFileError(path, f'line {reader.line_num}: {problem}')
  except (UnicodeDecodeError, csv.Error) as err:
    raise DataFileError(path, f'could not be read as CSV text ({err})') from err


def load_kuairec_matrix(
    path: str | os.PathLike[str], clip_max: float | None = 10.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads KuaiRec's `small_matrix.csv` into a dense user x video matrix.

  The file has a header line naming its columns. It needs `user_id`,
  `video_id` (non-negative integers) and `watch_ratio` (a finite number), in
  any order; other columns (play_duration, video_duration, time, date,
  timestamp, ...) are ignored and may hold anything without a comma (or
  be quoted). Blank lines are skipped.

  Preprocessing (docs/method.md §5.2):
    - watch_ratio is clipped to [0, clip_max];
    - user ids and video ids are mapped to dense indices 0.. in order of first
      appearance in the file;
    - the pairs are pivoted to a dense matrix, unobserved pairs are 0;
    - a (user, video) pair that occurs on several lines keeps the value of the
      LAST one. The number of such duplicates (lines beyond the first for a
      pair) is logged (logger `cpg_jax.environments.reward_matrix`, WARNING if
      > 0, else INFO), together with the counts of clipped values.

  Speed: one vectorised NumPy parse (`np.loadtxt` on the three columns); the
  real file (~4.7M lines) takes about a second. A malformed file is then
  rescanned line by line only to name the first bad line.

  Args:
    path: the CSV file.
    clip_max: upper clip for watch_ratio, finite and > 0; None clips only
      below (at 0).
  Returns:
    (Q, user_ids, item_ids):
      Q: float32 `[users, videos]`.
      user_ids: int64 `[users]`, the original user_id of each row of Q.
      item_ids: int64 `[videos]`, the original video_id of each column of Q.
  Raises:
    DataFileError: the file is missing, empty, has no data rows, lacks a
      required column, or has a malformed value (the line is named).
    ValueError: clip_max is out of range.
  """
  if clip_max is not None and (
      isinstance(clip_max, (bool, np.bool_))
      or not isinstance(clip_max, numbers.Real)
      or not math.isfinite(clip_max)
      or clip_max <= 0
  ):
    raise ValueError(f'clip_max must be a finite number > 0 or None, got '
                     f'{clip_max!r}')
  path = os.fspath(path)
  check_data_file(path)
  users, videos, ratio = _read_kuairec_columns(path)
  user_ids, u = first_appearance(users.astype(np.int64))
  item_ids, v = first_appearance(videos.astype(np.int64))
  num_users, num_items = len(user_ids), len(item_ids)
  if num_users > _MAX_SIZE or num_items > _MAX_SIZE:
    raise DataFileError(path, f'has {num_users} users x {num_items} items; at '
                        'most 2**31 - 1 of each are supported')

  num_above = int((ratio > clip_max).sum()) if clip_max is not None else 0
  num_below = int((ratio < 0).sum())
  ratio = np.clip(ratio, 0.0, clip_max)
  q, num_observed = pivot_keep_last(u, v, ratio, (num_users, num_items))
  num_duplicates = len(u) - num_observed
  _logger.log(
      logging.WARNING if num_duplicates else logging.INFO,
      '%s: %d data rows -> %d users x %d videos, %d of %d pairs observed; '
      '%d duplicated (user, video) lines (kept the last); watch_ratio clipped '
      'to [0, %s]: %d below, %d above.',
      path, len(u), num_users, num_items, num_observed,
      num_users * num_items, num_duplicates, clip_max, num_below, num_above)
  return q, user_ids, item_ids


def _read_kuairec_columns(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(user_id, video_id, watch_ratio) of every data line, float64 `[rows]`
  each, checked (ids non-negative integers, ratios finite)."""
  columns = _kuairec_columns(path)
  with warnings.catch_warnings():
    # "input contained no data" is turned into a DataFileError below.
    warnings.simplefilter('ignore', UserWarning)
    try:
      data = np.loadtxt(
          path, dtype=np.float64, delimiter=',', skiprows=1, usecols=columns,
          comments=None, quotechar='"', ndmin=2, encoding='utf-8-sig')
    except ValueError as err:  # includes UnicodeDecodeError
      _locate_kuairec_problem(path, columns)
      raise DataFileError(path, f'could not be parsed: {err}') from err
  if data.shape[0] == 0:
    raise DataFileError(path, 'has a header but no data rows')

  users, videos, ratio = data[:, 0], data[:, 1], data[:, 2]
  ids_ok = np.all(
      [np.isfinite(v) & (v >= 0) & (v == np.floor(v)) & (v <= _MAX_EXACT_ID)
       for v in (users, videos)])
  if not ids_ok or not np.isfinite(ratio).all():
    _locate_kuairec_problem(path, columns)
    raise DataFileError(path, 'has an invalid id or watch_ratio value')
  return users, videos, ratio


def pivot_keep_last(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                    shape: tuple[int, int]) -> tuple[np.ndarray, int]:
  """A dense float32 matrix of `shape` from (row, col, value) triples.

  Unobserved entries are 0; a (row, col) pair given several times keeps the
  value of its LAST occurrence.

  Args:
    rows, cols: int `[n]` dense indices; values: `[n]`.
  Returns:
    (matrix float32 `shape`, number of distinct observed pairs).
  """
  flat = rows * shape[1] + cols
  keep = last_occurrences(flat)
  matrix = np.zeros(shape[0] * shape[1], np.float32)
  matrix[flat[keep]] = values[keep]
  return matrix.reshape(shape), len(keep)


def last_occurrences(keys: np.ndarray) -> np.ndarray:
  """Indices of the last occurrence of each distinct key, ascending: int `[distinct]`."""
  # The last occurrence is the first in the reversed order. (NumPy does not
  # promise an order for repeated indices in a fancy assignment, so
  # duplicates are removed explicitly.)
  _, first_in_reversed = np.unique(keys[::-1], return_index=True)
  return np.sort(len(keys) - 1 - first_in_reversed)


def _locate_dense_csv_problem(path: str, skip: int) -> None:
  """Raises at the first non-numeric field or ragged line of a dense CSV."""
  width = None
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      for _ in range(skip):
        next(reader, None)
      for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
          continue
        if width is None:
          width = len(row)
        elif len(row) != width:
          raise DataFileError(path, f'line {reader.line_num}: has {len(row)} '
                              f'columns, earlier lines have {width}')
        for col, text in enumerate(row):
          try:
            float(text)
          except ValueError:
            raise DataFileError(
                path, f'line {reader.line_num}, column {col + 1}: value '
                f'{text!r} is not a number') from None
  except (UnicodeDecodeError, csv.Error) as err:
    raise DataFileError(path, f'could not be read as CSV text ({err})') from err


def _load_dense_csv(path: str) -> np.ndarray:
  first = read_first_line(path)
  if not first.strip():
    raise DataFileError(path, 'is empty (first line is blank)')
  try:
    for text in next(csv.reader([first])):
      float(text)
    skip = 0
  except ValueError:
    skip = 1  # a non-numeric first line is a header
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    try:
      a = np.loadtxt(path, dtype=np.float64, delimiter=',', skiprows=skip,
                     comments=None, quotechar='"', ndmin=2,
                     encoding='utf-8-sig')
    except ValueError as err:
      _locate_dense_csv_problem(path, skip)
      raise DataFileError(path, f'could not be parsed: {err}') from err
  if a.size == 0:
    raise DataFileError(path, 'has no data rows')
  return a


def load_dense_matrix(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads a dense reward matrix `[users, items]` from .npy or .csv.

  .npy: a 2-D array of real numbers (no pickles). .csv: comma-separated
  numbers, one matrix row per line, all lines the same width; a first line
  with any non-numeric field is taken as a header and skipped; blank lines
  are skipped.

  Args:
    path: a `.npy` or `.csv` file (extension matched case-insensitively).
  Returns:
    float32 `[users, items]`, finite.
  Raises:
    DataFileError: missing or empty file, unknown extension, unreadable
      content, not 2-D, empty, non-numeric, or NaN / inf entries.
  """
  path = os.fspath(path)
  check_data_file(path)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npy':
    try:
      a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
      raise DataFileError(path, f'is not a readable .npy array ({err})') from err
    if not isinstance(a, np.ndarray):
      raise DataFileError(path, 'does not hold a single array')
  elif ext == '.csv':
    a = _load_dense_csv(path)
  else:
    raise DataFileError(
        path, f'unknown extension {ext!r}; expected .npy or .csv')

  if a.ndim != 2:
    raise DataFileError(
        path, f'must hold a 2-D matrix [users, items], got shape {a.shape}')
  if a.shape[0] == 0 or a.shape[1] == 0:
    raise DataFileError(path, f'holds an empty matrix of shape {a.shape}')
  if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
          or a.dtype == np.bool_):
    raise DataFileError(path, f'must hold real numbers, got dtype {a.dtype}')
  a = a.astype(np.float32)
  bad = ~np.isfinite(a)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise DataFileError(
        path, f'contains {int(bad.sum())} non-finite value(s) (NaN or inf, '
        f'also after float32 conversion), the first at matrix row {row}, '
        f'column {col} (0-based)')
  return a
