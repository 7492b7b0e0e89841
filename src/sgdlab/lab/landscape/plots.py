"""Pictures of optimizer paths: a log-scaled contour map with the paths, and the loss per step.

:func:`plot_paths` draws a static figure (two panels: map and loss curve) and returns it, so
notebooks can restyle it; :func:`animate_paths` draws the same figure frame by frame and writes an
animated GIF (Pillow) or, when ffmpeg is on PATH, an MP4.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from sgdlab.lab.landscape.functions import Function2D
from sgdlab.lab.landscape.trajectories import Trajectory

__all__ = ["animate_paths", "plot_network", "plot_paths"]

# Path colours chosen to stand out on the light-to-dark "bone" background of the contour map.
PALETTE = ["#e6194b", "#f58231", "#3cb44b", "#4363d8", "#911eb4", "#f032e6", "#9a6324", "#000075"]


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _use_log(function: Function2D, Z: np.ndarray) -> bool:
    if function.log_scale is not None:
        return function.log_scale
    # Decide from the grid: a minimum inside the window means "bounded below here" -> log levels.
    i, j = np.unravel_index(np.nanargmin(Z), Z.shape)
    return 0 < i < Z.shape[0] - 1 and 0 < j < Z.shape[1] - 1


def _floor(function: Function2D, grid, trajectories: Sequence[Trajectory]) -> float:
    """The value that counts as "zero" on the log scale: f* when known, else the lowest value
    found -- on the grid, on the paths, or by polishing the best of those with L-BFGS (without
    that, whichever path happened to pass lowest would plunge to the bottom of the log axis)."""
    if function.min_value is not None:
        return function.min_value
    import torch

    X, Y, Z = grid
    candidates = [(float(np.nanmin(Z)), np.unravel_index(np.nanargmin(Z), Z.shape))]
    best_value, best_index = candidates[0]
    best_point = (float(X[best_index]), float(Y[best_index]))
    for t in trajectories:
        if len(t.losses) and np.nanmin(t.losses) < best_value:
            i = int(np.nanargmin(t.losses))
            best_value, best_point = float(t.losses[i]), tuple(map(float, t.path[i]))
    point = torch.tensor(best_point, dtype=torch.float64, requires_grad=True)
    polish = torch.optim.LBFGS([point], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        polish.zero_grad()
        value = function.value(point)
        value.backward()
        return value

    try:
        polish.step(closure)
        with torch.no_grad():
            polished = float(function.value(point))
    except Exception:  # noqa: BLE001 - polishing is a nicety; the observed minimum is fine
        polished = best_value
    return min(best_value, polished) if np.isfinite(polished) else best_value


def _log_gap(values: np.ndarray, floor: float, eps: float) -> np.ndarray:
    return np.maximum(np.asarray(values, dtype=float) - floor, eps)


def _draw_map(ax, function: Function2D, grid, trajectories: Sequence[Trajectory], fig):
    """Contours, colour bar and markers; returns (line per trajectory, head marker per trajectory)."""
    from matplotlib import colors, ticker

    X, Y, Z = grid
    finite = np.isfinite(Z)
    Zf = np.where(finite, Z, np.nanmax(np.where(finite, Z, -np.inf)))
    if _use_log(function, Zf):
        floor = _floor(function, (X, Y, Zf), trajectories)
        hi = float(np.max(Zf - floor))
        eps = max(hi * 1e-9, 1e-12)
        gap = _log_gap(Zf, floor, eps)
        lo = max(float(np.min(gap)), hi * 1e-7, eps)
        levels = np.logspace(math.log10(lo), math.log10(hi), 40)
        norm = colors.LogNorm(vmin=lo, vmax=hi)
        filled = ax.contourf(X, Y, np.clip(gap, lo, hi), levels=levels, norm=norm, cmap="bone",
                             extend="neither")
        ax.contour(X, Y, np.clip(gap, lo, hi), levels=levels[::4], norm=norm, colors="white",
                   linewidths=0.4, alpha=0.5)
        bar = fig.colorbar(filled, ax=ax, pad=0.02, fraction=0.05)
        bar.locator = ticker.LogLocator()
        bar.formatter = ticker.LogFormatterMathtext()
        bar.update_ticks()
        bar.set_label("f(x, y) − f*  (log scale)" if function.min_value is not None
                      else "f(x, y) − min f  (log scale)")
    else:
        bound = float(np.max(np.abs(Zf))) or 1.0
        norm = colors.TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        levels = np.linspace(-bound, bound, 41)
        filled = ax.contourf(X, Y, Zf, levels=levels, norm=norm, cmap="RdBu_r")
        ax.contour(X, Y, Zf, levels=levels[::4], colors="white", linewidths=0.4, alpha=0.6)
        bar = fig.colorbar(filled, ax=ax, pad=0.02, fraction=0.05)
        bar.set_label("f(x, y)")

    ax.set_xlim(X.min(), X.max())
    ax.set_ylim(Y.min(), Y.max())
    ax.set_xlabel("x")
    ax.set_ylabel("y")

    lines, heads = [], []
    for i, t in enumerate(trajectories):
        color = PALETTE[i % len(PALETTE)]
        if t.reference is not None:
            ax.plot(*t.reference.path.T, color=color, lw=1.2, ls="--", alpha=0.9)
        (line,) = ax.plot(*t.path.T, color=color, lw=1.8 if not t.stochastic else 1.0,
                          alpha=0.95, label=_legend_label(t))
        (head,) = ax.plot(*t.path[-1], "o", color=color, ms=6, mec="white", mew=1.0, zorder=5)
        lines.append(line)
        heads.append(head)
    if trajectories:
        x0, y0 = trajectories[0].path[0]
        ax.plot(x0, y0, "o", ms=10, mfc="white", mec="black", mew=1.5, zorder=6, label="start")
    if function.minima:
        mx, my = np.array(function.minima).T
        label = "global minimum" if len(function.minima) == 1 else "global minima"
        ax.plot(mx, my, "*", ms=16, mfc="gold", mec="black", mew=1.0, zorder=6, label=label)
    if function.saddles:
        sx, sy = np.array(function.saddles).T
        ax.plot(sx, sy, "X", ms=11, mfc="white", mec="black", mew=1.0, zorder=6,
                label="saddle point")
    return lines, heads


def _legend_label(t: Trajectory) -> str:
    if t.status == "escaped":
        # The point left a box 1000x the window: down an unbounded valley, or blowing up.
        end = "  [ran off to −∞]" if t.losses[-1] < t.losses[0] else "  [diverged]"
    else:
        end = "  [diverged]" if t.status == "diverged" else ""
    return f"{t.label}{end}"


def _draw_losses(ax, function: Function2D, trajectories: Sequence[Trajectory], grid):
    grid_Z = grid[2]
    lines = []
    if _use_log(function, grid_Z):
        floor = _floor(function, grid, trajectories)
        eps = 1e-16 * max(1.0, abs(floor))
        transform = lambda v: _log_gap(v, floor, eps)  # noqa: E731
        ax.set_yscale("log")
        ax.set_ylabel("f − f*" if function.min_value is not None else "f − min f")
    else:
        # Unbounded below (saddles): a linear axis over the map's range; paths that run off
        # to -inf leave the panel at the bottom, as they leave the map.
        transform = lambda v: np.asarray(v, dtype=float)  # noqa: E731
        finite = grid_Z[np.isfinite(grid_Z)]
        lo, hi = float(finite.min()), float(finite.max())
        highest = max([hi] + [float(np.max(t.losses)) for t in trajectories if len(t.losses)])
        margin = 0.05 * (highest - lo or 1.0)
        ax.set_ylim(lo - margin, highest + margin)
        ax.set_ylabel("f(x, y)")
    for i, t in enumerate(trajectories):
        color = PALETTE[i % len(PALETTE)]
        if t.reference is not None:
            ax.plot(np.arange(len(t.reference.losses)), transform(t.reference.losses), color=color,
                    lw=1.2, ls="--", alpha=0.9)
        (line,) = ax.plot(np.arange(len(t.losses)), transform(t.losses), color=color,
                          lw=1.6 if not t.stochastic else 1.0, label=t.label)
        lines.append(line)
    if function.log_scale is not False and ax.get_yscale() == "log":
        # Exact runs can reach f* to float64 precision (1e-16); don't let that squash the rest.
        top = max((float(np.max(transform(t.losses))) for t in trajectories if len(t.losses)), default=1.0)
        bottom, _ = ax.get_ylim()
        ax.set_ylim(max(bottom, top * 1e-12), None)
    ax.set_xlabel("step")
    ax.grid(True, which="major", alpha=0.3)
    steps = max((t.steps for t in trajectories), default=1)
    ax.set_xlim(0, max(steps, 1))
    return lines, transform


def _title(function: Function2D, trajectories: Sequence[Trajectory]) -> str:
    title = function.name
    if function.formula and function.formula != function.name:
        title += f":  {function.formula}"
    extra = []
    noisy = [t for t in trajectories if t.noise > 0]
    batched = [t for t in trajectories if t.batch_size]
    if noisy:
        extra.append(f"gradient noise σ = {noisy[0].noise:g}")
    if batched:
        extra.append(f"mini-batches of {batched[0].batch_size} out of {function.n_samples} points")
    exact = [t.label for t in trajectories if not t.stochastic]
    if extra and exact:
        extra.append(f"exact gradients: {', '.join(exact)}")
    if extra:
        title += "\n" + ", ".join(extra) + "  (dashed: exact gradients)"
    return title


def _figure(function: Function2D, grid, trajectories: Sequence[Trajectory]):
    plt = _pyplot()
    fig, (ax_map, ax_loss) = plt.subplots(
        1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.25, 1]}, layout="constrained"
    )
    fig.get_layout_engine().set(wspace=0.06)
    lines, heads = _draw_map(ax_map, function, grid, trajectories, fig)
    loss_lines, transform = _draw_losses(ax_loss, function, trajectories, grid)
    ax_map.legend(loc="best", fontsize=9, framealpha=0.85)
    ax_loss.set_title("loss per step")
    fig.suptitle(_title(function, trajectories), fontsize=13)
    return fig, (ax_map, ax_loss), lines, heads, loss_lines, transform


def plot_paths(
    function: Function2D,
    trajectories: Sequence[Trajectory],
    path: str | Path | None = None,
    *,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    resolution: int = 300,
    dpi: int = 120,
):
    """Draw the contour map with every path and the loss-per-step panel; save to ``path`` if given.

    ``grid`` is ``(X, Y, Z)`` as returned by :meth:`Function2D.grid` (computed when omitted).
    Returns the matplotlib figure.
    """
    grid = grid if grid is not None else function.grid(resolution)
    fig, *_ = _figure(function, grid, trajectories)
    fig.set_dpi(dpi)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def animate_paths(
    function: Function2D,
    trajectories: Sequence[Trajectory],
    path: str | Path,
    *,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    resolution: int = 200,
    frames: int = 100,
    fps: int = 20,
    dpi: int = 80,
    progress=None,
) -> Path:
    """Write an animation of the paths growing step by step to ``path`` and return the path.

    ``.gif`` is written with Pillow; ``.mp4`` needs ffmpeg on PATH (``ValueError`` otherwise).
    ``frames`` frames are spread evenly over the steps and the last one is held for a second.
    ``progress(done, total)`` is called after each frame when given.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"animation path must end in .gif or .mp4, got {str(path)!r}")
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise ValueError("writing .mp4 needs ffmpeg on PATH; use a .gif path instead")

    plt = _pyplot()
    grid = grid if grid is not None else function.grid(resolution)
    fig, (_, ax_loss), lines, heads, loss_lines, transform = _figure(function, grid, trajectories)
    fig.set_dpi(dpi)
    step_text = ax_loss.text(0.98, 0.97, "", transform=ax_loss.transAxes, ha="right", va="top",
                             fontsize=11, bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})
    moving = [*lines, *heads, *loss_lines, step_text]
    # Blitting: the contour map (the expensive part) is drawn once, as the background; each
    # frame only redraws the moving artists on top of it. A full redraw per frame (what
    # matplotlib's animation writers do) is ~100x slower here.
    for artist in moving:
        artist.set_animated(True)
    fig.canvas.draw()
    fig.set_layout_engine("none")  # keep the layout fixed from now on
    canvas = fig.canvas
    background = canvas.copy_from_bbox(fig.bbox)

    steps = max((t.steps for t in trajectories), default=0)
    stops = np.unique(np.linspace(0, steps, max(2, min(frames, steps + 1))).round().astype(int))
    schedule = [int(k) for k in stops] + [steps] * fps  # hold the final picture for a second

    images = []
    for i, k in enumerate(schedule):
        canvas.restore_region(background)
        for t, line, head, loss_line in zip(trajectories, lines, heads, loss_lines):
            j = min(k, t.steps)
            line.set_data(t.path[: j + 1, 0], t.path[: j + 1, 1])
            head.set_data([t.path[j, 0]], [t.path[j, 1]])
            loss_line.set_data(np.arange(j + 1), transform(t.losses[: j + 1]))
        step_text.set_text(f"step {k}")
        for artist in moving:
            fig.draw_artist(artist)
        if i == 0 or k != schedule[i - 1]:
            images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        else:  # held frame
            images.append(images[-1])
        if progress is not None:
            progress(i + 1, len(schedule))
    plt.close(fig)
    _write_movie(images, path, fps)
    return path


def _write_movie(images: list[np.ndarray], path: Path, fps: int) -> None:
    if path.suffix.lower() == ".gif":
        from PIL import Image

        # One shared palette (from the last, fullest frame) keeps colours steady between frames;
        # octree quantization keeps small saturated areas (markers, paths) in the palette.
        last = Image.fromarray(images[-1]).quantize(colors=255, method=Image.Quantize.FASTOCTREE)
        frames = [Image.fromarray(a).quantize(palette=last, dither=Image.Dither.NONE) for a in images]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                       loop=0, optimize=False)
        return
    import subprocess

    height, width = images[0].shape[:2]
    command = [
        "ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", str(path),
    ]
    subprocess.run(command, input=b"".join(a.tobytes() for a in images), check=True)


# --- real networks ----------------------------------------------------------------------------


def plot_network(result, path: str | Path | None = None, *, dpi: int = 120):
    """The figure of a :class:`~sgdlab.lab.landscape.network.NetworkLandscape`.

    Top: train (solid) and test (dashed) loss along the line from the initialisation to each
    solution, and train loss along the line between each pair of solutions. Bottom: the 2-D
    filter-normalized slice around each solution, all on one logarithmic colour scale so that
    flat and sharp minima can be compared at a glance.
    """
    from matplotlib import colors, ticker

    plt = _pyplot()
    labels = [s.label for s in result.solutions if s.label in result.slices]
    by_label = {s.label: s for s in result.solutions}
    color_of = {s.label: PALETTE[i % len(PALETTE)] for i, s in enumerate(result.solutions)}
    n = max(len(labels), 1)
    fig = plt.figure(figsize=(max(11.0, 4.6 * n + 1.5), 9.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.15])

    ax_init, ax_pair = top.subplots(1, 2)
    alphas = result.line_alphas
    for label, line in result.init_lines.items():
        ax_init.plot(alphas, line, color=color_of[label], lw=1.8, label=f"{label} (train)")
        ax_init.plot(alphas, result.init_lines_test[label], color=color_of[label], lw=1.2, ls="--",
                     label=f"{label} (test)")
    for ax in (ax_init, ax_pair):
        ax.set_yscale("log")
        ax.axvline(0.0, color="0.6", lw=0.8)
        ax.axvline(1.0, color="0.6", lw=0.8)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_ylabel("loss")
    ax_init.set_xlabel("α   (0 = initialisation, 1 = trained solution)")
    ax_init.set_title("from the initialisation to each solution")
    if result.init_lines:
        ax_init.legend(fontsize=8)
    pair_styles = ["-", "--", "-.", ":"]
    for k, ((a, b), line) in enumerate(result.pair_lines.items()):
        ax_pair.plot(alphas, line, color=color_of[a], lw=1.8, ls=pair_styles[k % len(pair_styles)],
                     label=f"{a}  →  {b}")
        ax_pair.plot([0.0, 1.0], [line[np.argmin(np.abs(alphas))], line[np.argmin(np.abs(alphas - 1))]],
                     "o", color=color_of[a], ms=5)
    ax_pair.set_xlabel("α   (0 = first solution, 1 = second solution)")
    ax_pair.set_title("between solutions (train loss)")
    if result.pair_lines:
        ax_pair.legend(fontsize=8)
    else:
        ax_pair.text(0.5, 0.5, "needs two solutions", transform=ax_pair.transAxes, ha="center",
                     color="0.4")

    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    for ax in (ax_init, ax_pair):
        # Plain numbers (0.3, not 3x10^-1); minor ticks labelled only when the axis spans less
        # than a decade, where there would otherwise be no label at all.
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else ticker.NullFormatter())

    axes = np.atleast_1d(bottom.subplots(1, n, sharex=True, sharey=True))
    if labels:
        values = np.concatenate([result.slices[label].ravel() for label in labels])
        values = values[np.isfinite(values) & (values > 0)]
        lo, hi = float(values.min()), float(values.max())
        hi = max(hi, lo * 1.001)
        levels = np.logspace(math.log10(lo), math.log10(hi), 30)
        norm = colors.LogNorm(vmin=lo, vmax=hi)
        coords = result.slice_coords
        for ax, label in zip(axes, labels):
            Z = np.clip(np.nan_to_num(result.slices[label], nan=hi, posinf=hi), lo, hi)
            filled = ax.contourf(coords, coords, Z, levels=levels, norm=norm, cmap="viridis")
            ax.contour(coords, coords, Z, levels=levels[::3], colors="white", linewidths=0.5,
                       alpha=0.6)
            ax.plot(0, 0, "*", ms=14, mfc="gold", mec="black", mew=1.0)
            s = by_label[label]
            ax.set_title(f"{label}\ntrain loss {s.train_loss:.3g} · test {result.metric} "
                         f"{s.test_metric:.3f} · λ_max {s.sharpness:.3g}", fontsize=10)
            ax.set_aspect("equal")
            ax.set_xlabel("direction 1 (filter-normalized)")
        axes[0].set_ylabel("direction 2 (filter-normalized)")
        bar = bottom.colorbar(filled, ax=list(axes), fraction=0.04, pad=0.02)
        bar.locator = ticker.LogLocator()
        bar.formatter = ticker.LogFormatterMathtext()
        bar.update_ticks()
        bar.set_label("train loss (same scale for all)")
    bottom.suptitle("2-D slices around each solution (Li et al. 2018), ★ = the solution", fontsize=11)
    fig.suptitle(f"{result.task}: loss landscape of the trained networks", fontsize=13)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
