"""The learning-curve figure of a set of runs (`experiments.runs`).

One panel per facet value (e.g. per K), in each one curve per run: the mean
policy value over seeds with a band of one standard deviation, the optimum
(solid black) and 95% of it (dashed), a dotted line at the optimal ESR with
the run's own LSR where that LSR caps the value (uniform, anti), and an "x"
where a seed diverged. Every estimator has one colour in every figure (the
paper's: V-PG blue, V-PG-SwR green, CA-PG red, CA-PG-SwR pink); runs of one
estimator that differ otherwise get their own line style. The layout is
constrained (nothing clipped), the title is one line over a short subtitle,
and each legend swatch is drawn as its curve over its band.

matplotlib is imported when a figure is drawn, not when this module is.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Sequence

import numpy as np

from cpg_jax.experiments import runs as runs_lib

LINE_STYLES = ("-", "--", "-.", (0, (1, 1)))
_BAND_ALPHA = 0.18


def curve_styles(runs: Sequence[dict[str, Any]], labels: Sequence[str]
                 ) -> dict[str, tuple[str, Any]]:
  """label -> (colour, line style): the estimator's colour, and a new line
  style for each further label of the same estimator."""
  colors = runs_lib.estimator_colors(runs)
  styles: dict[str, tuple[str, Any]] = {}
  per_estimator: dict[str, int] = {}
  for i in runs_lib.in_paper_order(runs, range(len(runs))):
    if labels[i] in styles:
      continue
    name = str(runs[i]["config"].get("estimator", "?"))
    count = per_estimator.get(name, 0)
    per_estimator[name] = count + 1
    styles[labels[i]] = (colors[name], LINE_STYLES[count % len(LINE_STYLES)])
  return styles


def _mean_and_std(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  mean = runs_lib.mean_curve(run["values"])
  std = runs_lib.nan_stat(lambda v: np.nanstd(v, axis=1), run["values"])
  return mean, std


def _draw_panel(ax, runs, members, labels, styles, title: str) -> dict[str, bool]:
  """The curves and reference lines of one panel; which marks it used."""
  from matplotlib import patheffects  # pylint: disable=g-import-not-at-top
  outline = [patheffects.withStroke(linewidth=4.5, foreground="white")]
  used = {"diverged": False, "lsr_limit": False}
  for i in runs_lib.in_paper_order(runs, members):
    run, (color, style) = runs[i], styles[labels[i]]
    mean, std = _mean_and_std(run)
    ax.plot(run["steps"], mean, color=color, linestyle=style, linewidth=1.8)
    ax.fill_between(run["steps"], mean - std, mean + std, color=color, alpha=_BAND_ALPHA,
                    linewidth=0)
    for step in (s for s in run["diverged"] if s is not None):
      used["diverged"] = True
      at = min(int(np.searchsorted(run["steps"], step)), len(mean) - 1)
      ax.plot(step, mean[at], marker="x", color=color, markersize=12, mew=2.6,
              linestyle="none", zorder=5, path_effects=outline)
  for optimum in sorted({round(float(runs[i]["optimal"]), 9) for i in members}):
    ax.axhline(optimum, color="black", linestyle="-", linewidth=1.1)
    ax.axhline(0.95 * optimum, color="0.35", linestyle="--", linewidth=1.1)
  for best in sorted({round(float(runs[i]["best_with_lsr"]), 9)
                      for i in members if runs_lib.lsr_limits(runs[i])}):
    used["lsr_limit"] = True
    ax.axhline(best, color="black", linestyle=":", linewidth=1.6)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  return used


def _panel_title(runs, facet, values, members, many_optima: bool) -> str:
  head = runs_lib.facet_title(facet, values) if facet else ""
  if not many_optima:
    return head
  optima = sorted({round(float(runs[i]["optimal"]), 9) for i in members})
  optimum_text = ("optimum " if len(optima) == 1 else "optima ") + ", ".join(
      f"{o:.3f}" for o in optima)
  return f"{head} ({optimum_text})" if head else optimum_text


def _legend_handles(labels_in_order, styles, optimum: float | None, used: dict[str, bool]):
  from matplotlib.legend_handler import HandlerTuple  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  handles, names = [], []
  for label in labels_in_order:
    color, style = styles[label]
    band = Patch(facecolor=color, alpha=_BAND_ALPHA, edgecolor="none")
    handles.append((band, Line2D([], [], color=color, linestyle=style, linewidth=2.2)))
    names.append(label)
  optimum_name = "optimum" if optimum is None else f"optimum ({optimum:.3f})"
  handles += [Line2D([], [], color="black", linewidth=1.1),
              Line2D([], [], color="0.35", linestyle="--", linewidth=1.1)]
  names += [optimum_name, "95% of the optimum"]
  if used["lsr_limit"]:
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.6))
    names.append("optimal ESR with this LSR")
  if used["diverged"]:
    handles.append(Line2D([], [], color="0.2", marker="x", linestyle="none", markersize=9,
                          mew=2))
    names.append("a seed diverged")
  return handles, names, {tuple: HandlerTuple(ndivide=1, pad=0.0)}


def _fit(text: str, width_inches: float, fontsize: float) -> str:
  """`text` wrapped so that no line is wider than the figure."""
  chars = max(20, int(width_inches * 72 / (0.58 * fontsize)))
  return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _add_legend(fig, handles, names, handler_map, max_columns: int) -> None:
  """The legend under the panels, in as many columns (at most `max_columns`)
  as fit in the figure's width: long labels get fewer columns, not clipped."""
  renderer = fig.canvas.get_renderer()
  limit = 0.98 * fig.get_figwidth() * fig.dpi
  for ncol in range(min(len(handles), max_columns), 0, -1):
    legend = fig.legend(handles, names, handler_map=handler_map, loc="outside lower center",
                        ncol=ncol, frameon=False)
    if ncol == 1 or legend.get_window_extent(renderer).width <= limit:
      return
    legend.remove()


def _add_titles(fig, title: str, subtitle: str, width: float) -> None:
  """The title (wrapped to the figure's width) over a smaller grey subtitle.

  The suptitle holds the title and one blank line, so that the constrained
  layout keeps room for the subtitle, which is drawn into that line.
  """
  text = fig.suptitle(_fit(title, width, 12) + "\n ", fontsize=12)
  fig.canvas.draw()  # Runs the layout: the suptitle's place is now known.
  box = text.get_window_extent().transformed(fig.transFigure.inverted())
  fig.text(0.5, box.y0 + 0.1 * box.height / (title.count("\n") + 2), subtitle,
           ha="center", va="bottom", fontsize=10, color="0.35")


def plot(runs: Sequence[dict[str, Any]], out: str, title: str | None = None,
         facet: Sequence[str] = ()) -> str:
  """Draws the learning curves of `runs` to the PNG `out`, one panel per
  facet value; returns `out`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import FuncFormatter  # pylint: disable=g-import-not-at-top

  groups = runs_lib.facet_groups(runs, facet)
  labels = runs_lib.curve_labels(runs, facet)
  styles = curve_styles(runs, labels)
  optima = {round(float(run["optimal"]), 9) for run in runs}
  n = len(groups)
  ncols = n if n <= 3 else (2 if n == 4 else 3)
  nrows = math.ceil(n / ncols)
  width = max(8.0, 5.0 * ncols + 0.8)
  used = {"diverged": False, "lsr_limit": False}
  with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10}):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.6 * nrows + 1.8), squeeze=False,
                             sharex=True, layout="constrained")
    for panel, (values, members) in enumerate(groups):
      head = _panel_title(runs, facet, values, members, many_optima=len(optima) > 1)
      marks = _draw_panel(axes[panel // ncols][panel % ncols], runs, members, labels, styles,
                          head)
      used = {k: used[k] or marks[k] for k in used}
    for panel in range(n, nrows * ncols):
      axes[panel // ncols][panel % ncols].set_visible(False)
    if max(int(run["steps"][-1]) for run in runs) >= 10_000:
      for ax in axes.flat:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
    for col in range(ncols):  # The lowest drawn panel of each column.
      bottom = axes[max(r for r in range(nrows) if r * ncols + col < n)][col]
      bottom.xaxis.set_tick_params(labelbottom=True)
      bottom.set_xlabel("gradient steps")
    fig.supylabel("policy value")
    order = runs_lib.in_paper_order(runs, range(len(runs)))
    handles, names, handler_map = _legend_handles(
        list(dict.fromkeys(labels[i] for i in order)), styles,
        next(iter(optima)) if len(optima) == 1 else None, used)
    _add_legend(fig, handles, names, handler_map, 4 if ncols < 3 else 8)
    _add_titles(fig, title or runs_lib.default_title(runs, facet),
                f"mean over {runs_lib.seed_text(runs)}, band: ±1 std over seeds", width)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
  return out
