"""Training curves: losses, validation mAP and the learning rate of every training round, with the
step whose params the run kept (train.keep_best) marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence
import numpy as np
from graphbridge.evaluation.plots import style

ROUND_KEY = "round"  # rows of a self-training run carry their round (0, 1, ...; the last is final)


def kept_steps(rows: Sequence[Mapping[str, Any]]) -> dict[int, int]:
  """{round: step} of the best validated step of each round (the last ``val/best_step`` logged);
  with train.keep_best these are the params each round ended with."""
  out = {}
  for row in rows:
    best = row.get("val/best_step")
    if best is not None and np.isfinite(float(best)) and float(best) >= 0:
      out[int(row.get(ROUND_KEY, 0) or 0)] = int(best)
  return out


def _set_scale(ax, values: list[np.ndarray]) -> None:
  """A log y-axis with plain-number labels where the curves span more than a factor 5."""
  finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
  if finite.size and finite.min() > 0 and finite.max() / finite.min() > 5:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if np.log10(finite.max() / finite.min()) < 1.5:  # few decades: label 2x and 5x too
      ax.yaxis.set_minor_formatter(
        FuncFormatter(
          lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v)), 6) in (2.0, 5.0) else ""
        )
      )
    else:
      ax.yaxis.set_minor_formatter(NullFormatter())


def _note(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


class _Rounds:
  """The rows split by round, each sorted by step; series(round, key) -> (steps, finite values)."""

  def __init__(self, rows: Sequence[Mapping[str, Any]]):
    by_round: dict[int, list[tuple[float, Mapping]]] = {}
    for i, row in enumerate(rows):
      r = int(row.get(ROUND_KEY, 0) or 0)
      by_round.setdefault(r, []).append((float(row.get("step", i)), row))
    self.rows = {r: sorted(v, key=lambda t: t[0]) for r, v in sorted(by_round.items())}
    self.ids = list(self.rows)
    self.final = self.ids[-1]
    self.many = len(self.ids) > 1

  def series(self, r: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([s for s, _ in self.rows[r]])
    values = np.array(
      [float(row[key]) if row.get(key) is not None else np.nan for _, row in self.rows[r]]
    )
    keep = np.isfinite(values)
    return steps[keep], values[keep]

  def has(self, key: str) -> bool:
    return any(len(self.series(r, key)[0]) for r in self.ids)

  def label(self, r: int) -> str:
    return f"round {r} (final)" if r == self.final else f"round {r}"

  def colour(self, r: int, single: str = style.palette_colour(0)) -> str:
    """One round: `single`; several: light grey to black, the final round darkest (greys stay
    apart from the modalities' colours of the per-pair validation lines)."""
    if not self.many:
      return single
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["Greys"](0.35 + 0.65 * self.ids.index(r) / (len(self.ids) - 1)))


def _per_round(
  ax, rounds: _Rounds, key: str, width: float = 1.8, single: str = style.palette_colour(0)
) -> list[np.ndarray]:
  values = []
  for r in rounds.ids:
    steps, v = rounds.series(r, key)
    if len(steps):
      ax.plot(
        steps,
        v,
        color=rounds.colour(r, single),
        linewidth=width if r == rounds.final else 0.8 * width,
        marker="." if len(steps) < 40 else None,
        label=rounds.label(r) if rounds.many else None,
      )
      values.append(v)
  return values


def _mark_kept(axes, rounds: _Rounds, kept: Mapping[int, int], labelled=()) -> None:
  """A vertical line at each round's kept step, in the round's colour (black for one round),
  named in the legends of the `labelled` axes."""
  for r, step in sorted(kept.items()):
    if r not in rounds.rows:
      continue
    colour = rounds.colour(r, "black")
    text = f"kept step {step}" + (f", {rounds.label(r)}" if rounds.many else " (keep_best)")
    for ax in axes:
      ax.axvline(
        step,
        color=colour,
        linestyle="--",
        linewidth=1.2,
        zorder=1,
        label=text if ax in labelled else None,
        gid="kept-step",
      )


def _terms(ax, rounds: _Rounds, term_keys: list[str], fig) -> None:
  values = []
  for i, key in enumerate(term_keys):
    colour = style.palette_colour(i % len(style.OKABE_ITO))
    dashes = style.LINE_STYLES[(i // len(style.OKABE_ITO)) % len(style.LINE_STYLES)]
    for r in rounds.ids:
      steps, v = rounds.series(r, key)
      if not len(steps):
        continue
      final = r == rounds.final
      ax.plot(
        steps,
        v,
        color=colour,
        linestyle=dashes if final else ":",
        alpha=1.0 if final else 0.55,
        linewidth=1.5 if final else 1.1,
        label=key[len("loss/") :] if final else None,
        marker="." if len(steps) < 40 else None,
      )
      values.append(v)
  if not term_keys:
    _note(ax, "no per-term losses logged")
    return
  _set_scale(ax, values)
  handles = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
  if rounds.many:
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="0.4", linestyle=":", label="earlier rounds"))
  if len(term_keys) > 6:
    fig.legend(
      handles=handles,
      loc="outside right upper",
      fontsize=8,
      title="term",
      frameon=False,
      ncols=1 if len(term_keys) <= 24 else 2,
    )
  else:
    ax.legend(handles=handles, fontsize=8, title="term", framealpha=0.9)


def _validation(ax, rounds: _Rounds, colours: Mapping[str, str]) -> int:
  """The mean validation mAP of every round and each pair's of the final round; returns how many
  pairs were drawn."""
  if not rounds.has("val/mAP"):
    _note(ax, "no validation logged\n(train.validate_every = 0)")
    return 0
  _per_round(ax, rounds, "val/mAP", width=2.2, single="black")
  if not rounds.many:  # one run: its mean line is labelled; several: the rounds are
    ax.get_lines()[-1].set_label("mean")
  pairs = sorted(
    {
      k[len("val/mAP/") :]
      for _, row in rounds.rows[rounds.final]
      for k in row
      if isinstance(k, str) and k.startswith("val/mAP/")
    }
  )
  if 0 < len(pairs) <= 12:  # each pair of the final round: query's colour, gallery's dashes
    galleries = sorted({p.split("->")[-1] for p in pairs})
    for pair in pairs:
      steps, v = rounds.series(rounds.final, f"val/mAP/{pair}")
      query, gallery = pair.split("->")[0], pair.split("->")[-1]
      ax.plot(
        steps,
        v,
        color=colours.get(query, "0.5"),
        linestyle=style.LINE_STYLES[(galleries.index(gallery) + 1) % len(style.LINE_STYLES)],
        linewidth=1.0,
        alpha=0.8,
        label=pair,
      )
  return len(pairs) if len(pairs) <= 12 else 0


def plot_training_curves(
  metrics_rows: Sequence[Mapping[str, Any]],
  path: str | Path,
  title: str,
  kept: Mapping[int, int] | None = None,
  colours: Mapping[str, str] | None = None,
) -> Path:
  """Four panels: ``loss/total``, every other ``loss/...`` term, validation mAP (``val/mAP``, and
  ``val/mAP/<q>-><g>`` per pair of the final round) and the learning rate (``lr``).

  Rows with a ``round`` key are self-training rounds: each round is drawn (light grey to black,
  the final darkest; loss terms of earlier rounds dotted) and labelled. The per-pair validation
  lines take the query modality's colour (style.modality_colours) and one dash per gallery. A
  panel uses a log y-axis (plain-number tick labels) when its values span more than a factor 5.
  Rows missing a key (or holding NaN/inf for it) are skipped for that curve, so terms logged less
  often still draw as lines. With more than 6 terms the terms' legend moves outside the axes.

  Args:
    metrics_rows: dicts such as ``{"step": 10, "loss/total": 0.5, "lr": 1e-3, "val/mAP": 0.8,
      "round": 1, ...}``; ``step`` defaults to the row index, ``round`` to 0.
    path: output PNG path; title: figure title.
    kept: {round: step} whose params the run kept (train.keep_best; see kept_steps): a dashed
      vertical line on every panel.
    colours: modality -> colour for the per-pair validation lines (default: by name).
  """
  rows = style.check_rows("metrics_rows", metrics_rows, ())
  loss_keys = list(
    dict.fromkeys(k for row in rows for k in row if isinstance(k, str) and k.startswith("loss/"))
  )
  if not loss_keys:
    raise ValueError("metrics_rows has no key starting with 'loss/'; nothing to plot")
  rounds = _Rounds(rows)
  term_keys = [k for k in loss_keys if k != "loss/total"]
  width = 13.0 if len(term_keys) > 6 else 12.0
  fig = style.new_figure((width, 8.4))
  (ax_total, ax_terms), (ax_val, ax_lr) = fig.subplots(2, 2)

  if "loss/total" in loss_keys:
    _set_scale(ax_total, _per_round(ax_total, rounds, "loss/total"))
  else:
    _note(ax_total, "loss/total not logged")
  _terms(ax_terms, rounds, term_keys, fig)
  pair_names = {
    part
    for row in rows
    for k in row
    if isinstance(k, str) and k.startswith("val/mAP/")
    for part in k[len("val/mAP/") :].split("->")
  }
  n_pairs = _validation(
    ax_val, rounds, {**style.modality_colours(sorted(pair_names)), **(colours or {})}
  )
  if rounds.has("lr"):
    _set_scale(ax_lr, _per_round(ax_lr, rounds, "lr", width=1.5))
  else:
    _note(ax_lr, "lr not logged")
  if kept:
    _mark_kept([ax_total, ax_terms, ax_val, ax_lr], rounds, kept, labelled=(ax_total, ax_val))
  if rounds.many or kept:
    ax_total.legend(fontsize=8, framealpha=0.9)
  if rounds.has("val/mAP") and n_pairs > 6:  # below the panel, not over the lines
    ax_val.legend(
      fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=4, frameon=False
    )
  elif rounds.has("val/mAP"):
    ax_val.legend(fontsize=7.5, framealpha=0.9, ncols=2 if n_pairs > 3 else 1)
  for ax, name, unit in (
    (ax_total, "total loss", "loss"),
    (ax_terms, "loss terms (means over edges)", "loss"),
    (ax_val, "validation mAP (held-back train rows)", "mAP"),
    (ax_lr, "learning rate", "lr"),
  ):
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.grid(True, which="major", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
  fig.suptitle(style.wrap(title, style.title_width(width, 13)), fontsize=13)
  return style.save_figure(fig, path)
