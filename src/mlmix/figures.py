"""Figures of a mixed run: the regions, the thermo log, the energy drift.

* :func:`plot_regions`: the atoms projected on a plane and coloured by the weight p of
  the expensive forces, with the evaluation sets marked; next to it, p against the
  distance from the nearest core atom (p = 1), which shows the blend profile and the
  buffer.
* :func:`plot_log`: the columns of a run's ``thermo.log`` (or ``relax.log``) against
  time.
* :func:`plot_drift`: the re-evaluated total energy of :mod:`mlmix.drift` and its
  fitted line.

Matplotlib is imported when a figure is drawn. Figures are built as
``matplotlib.figure.Figure`` objects on an Agg canvas, not through pyplot: nothing
opens a window, no global figure list grows, and no backend is switched for the
caller. Distances are Å, times fs, energies eV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import ConfigurationError

AXES = {"x": 0, "y": 1, "z": 2}
COUNT_COLUMNS = ("n_core", "n_weighted", "n_expensive", "n_cheap")
CMAP = "YlOrRd"  # light for p = 0, so the weighted region stands out of a large cell


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    """A figure on an Agg canvas and its axes (no pyplot, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save(fig, path: str | Path) -> None:
    fig.savefig(Path(path), dpi=120)
    fig.clear()  # drop the artists now; the figure is not referenced elsewhere


# --------------------------------------------------------------------------- regions


def _weights(atoms: Atoms) -> np.ndarray:
    """``atoms.arrays["mlmix_p"]`` checked: ``(N,)`` finite values in [0, 1]."""
    if "mlmix_p" not in atoms.arrays:
        raise ConfigurationError(
            "atoms have no 'mlmix_p' array (per-atom weight of the expensive forces); "
            "compute forces with a MixedCalculator (store_arrays=True, the default) or "
            "read a frame written by 'mlmix run'")
    if len(atoms) == 0:
        raise ConfigurationError("no atoms to plot (an empty structure)")
    p = np.asarray(atoms.arrays["mlmix_p"], dtype=float)
    if p.shape != (len(atoms),) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ConfigurationError(
            f"atoms.arrays['mlmix_p'] must be {len(atoms)} finite weights in [0, 1], got "
            f"shape {p.shape}, range [{np.nanmin(p) if p.size else 'empty'}, "
            f"{np.nanmax(p) if p.size else 'empty'}]")
    return p


def _flag(atoms: Atoms, name: str) -> np.ndarray | None:
    """A boolean per-atom array if present (``(N,)``), else None."""
    if name not in atoms.arrays:
        return None
    flag = np.asarray(atoms.arrays[name])
    if flag.shape != (len(atoms),):
        raise ConfigurationError(
            f"atoms.arrays[{name!r}] must have shape ({len(atoms)},), got {flag.shape}")
    return flag.astype(bool)


def _axis_index(axis) -> int:
    if axis is None:
        return 2
    if isinstance(axis, str) and axis.lower() in AXES:
        return AXES[axis.lower()]
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= axis <= 2:
        return int(axis)
    raise ConfigurationError(
        f"axis must be 'x', 'y', 'z' or 0, 1, 2 (the direction projected out), got {axis!r}")


def distance_to_core(atoms: Atoms, core: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Minimum-image distance (Å) from each target atom to the nearest core atom.

    Args:
        atoms: the structure (periodic and triclinic cells allowed).
        core: ``(N,)`` bool, the core atoms (at least one).
        targets: ``(m,)`` int indices.

    Returns:
        ``(m,)`` Å. The search radius doubles until every target has found a core
        atom, so the cost stays proportional to the atoms near the core.
    """
    from .neighbours import pair_finder

    out = np.full(len(targets), np.inf)
    if len(targets) == 0:
        return out
    find = pair_finder(atoms.positions, atoms.cell.array, atoms.pbc, np.flatnonzero(core))
    extent = np.ptp(atoms.positions, axis=0)
    limit = 2.0 * float(np.linalg.norm(extent + np.abs(atoms.cell.array).sum(axis=0))) + 1.0
    radius, todo = 2.0, np.arange(len(targets))
    while todo.size:
        i, _, d = find(targets[todo], radius)
        found = np.full(len(atoms), np.inf)
        np.minimum.at(found, i, d)
        out[todo] = found[targets[todo]]
        todo = todo[~np.isfinite(out[todo])]
        if radius > limit:
            break
        radius *= 2.0
    return out


def _centred_positions(atoms: Atoms, p: np.ndarray) -> np.ndarray:
    """``(N, 3)`` Å: positions wrapped into a periodic cell shifted so that the most
    weighted atom sits at its centre, so a region at a cell corner is drawn whole.
    Unchanged when no direction is periodic or no atom is weighted."""
    from ase.geometry import wrap_positions

    if not atoms.pbc.any() or not (p > 0).any():
        return atoms.positions.copy()
    centre = atoms.cell.array.sum(axis=0) / 2
    shift = centre - atoms.positions[int(np.argmax(p))]
    return wrap_positions(atoms.positions + shift, atoms.cell, atoms.pbc) - shift


def plot_regions(atoms: Atoms, path: str | Path, *, axis=None) -> None:
    """Draw the regions of ``atoms`` into a PNG at ``path``.

    Left: positions projected along ``axis`` (``'x'``, ``'y'``, ``'z'`` or 0-2;
    default z), coloured by p = ``atoms.arrays["mlmix_p"]`` with a colour bar; the
    buffer (atoms in the expensive evaluation set ``mlmix_expensive`` with p = 0;
    every atom with p > 0 is in that set too) has a black outline, atoms the cheap
    potential skips (``mlmix_cheap`` False: the deep core) are squares.
    Atoms with larger p are drawn on top; periodic images are wrapped around the
    most weighted atom, so the region is drawn in one piece. Right: p against the distance from the
    nearest core atom (p = 1) for every weighted atom (the blend profile) and every
    buffer atom (expensive set, p = 0).

    The flags are optional (drawn when present); ``mlmix_p`` is required.
    """
    p = _weights(atoms)
    k = _axis_index(axis)
    expensive = _flag(atoms, "mlmix_expensive")
    cheap = _flag(atoms, "mlmix_cheap")
    u, v = [c for c in range(3) if c != k]
    names = "xyz"

    fig, axes = _figure(11.0, 4.8, ncols=2)
    ax, prof = axes[0]
    order = np.argsort(p, kind="stable")  # core last, on top
    size = float(np.clip(4.0e4 / max(len(atoms), 1), 2.0, 40.0))
    x = _centred_positions(atoms, p)[order]
    po = p[order]
    exp_o = expensive[order] if expensive is not None else np.zeros(len(p), bool)
    cheap_o = cheap[order] if cheap is not None else np.ones(len(p), bool)
    # Every atom with p > 0 is in the expensive set by definition; outlining only
    # the p = 0 members (the buffer) keeps the colour of the weighted atoms visible.
    # Region atoms get a readable size even in a large cell.
    buffer_o = exp_o & (po == 0)
    region_o = exp_o | (po > 0)
    style = {"cmap": CMAP, "vmin": 0.0, "vmax": 1.0}
    mappable = None
    for in_region in (False, True):
        for in_cheap, marker in ((True, "o"), (False, "s")):
            sel = (region_o == in_region) & (cheap_o == in_cheap)
            if not sel.any():
                continue
            edge = np.where(buffer_o[sel, None], [[0, 0, 0, 1]], [[0, 0, 0, 0]])
            mappable = ax.scatter(
                x[sel, u], x[sel, v], marker=marker, c=po[sel], **style,
                s=max(size, 10.0) if in_region else size, edgecolors=edge,
                linewidths=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"{names[u]} (Å)")
    ax.set_ylabel(f"{names[v]} (Å)")
    ax.set_title(f"{len(atoms)} atoms projected along {names[k]}")
    fig.colorbar(mappable, ax=ax, label="p (weight of the expensive forces)")
    _region_legend(ax, expensive is not None, cheap is not None)

    core = p >= 1.0
    weighted = p > 0
    buffer = (expensive & ~weighted) if expensive is not None else np.zeros(len(p), bool)
    targets = np.flatnonzero(weighted | buffer)
    if core.any():
        d = np.full(len(p), np.nan)
        d[targets] = distance_to_core(atoms, core, targets)
        prof.scatter(d[weighted], p[weighted], s=12, c="tab:red", label="p > 0")
        if buffer.any():
            prof.scatter(d[buffer], p[buffer], s=14, facecolors="none", edgecolors="k",
                         linewidths=0.6, label="buffer (expensive set, p = 0)")
        prof.legend(loc="upper right", fontsize=8)
        prof.set_title(f"{int(core.sum())} core atoms (p = 1), "
                       f"{int((weighted & ~core).sum())} blended, {int(buffer.sum())} buffer")
    else:
        prof.text(0.5, 0.5, "no core atom (p = 1)", ha="center", va="center",
                  transform=prof.transAxes)
    prof.set_xlabel("distance from the nearest core atom (Å)")
    prof.set_ylabel("p")
    prof.set_ylim(-0.05, 1.05)
    _save(fig, path)


def _region_legend(ax, has_expensive: bool, has_cheap: bool) -> None:
    from matplotlib.lines import Line2D

    handles = []
    if has_expensive:
        handles.append(Line2D([], [], ls="", marker="o", mfc="w", mec="k",
                              label="buffer: expensive set, p = 0"))
    if has_cheap:
        handles.append(Line2D([], [], ls="", marker="s", mfc="w", mec="0.5",
                              label="not evaluated by the cheap potential"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)


# --------------------------------------------------------------------------- logs


def read_log(log_path: str | Path) -> tuple[list[str], np.ndarray]:
    """Column names and ``(rows, columns)`` data of a whitespace table log.

    The header is the last ``#`` comment line before the first data line (earlier
    comment lines are notes). An absent file, a missing header, rows that do not
    match the header, or no data rows are ConfigurationErrors.
    """
    log_path = Path(log_path)
    if not log_path.is_file():
        raise ConfigurationError(f"log file {log_path} not found")
    header, has_data = None, False
    with open(log_path) as fh:
        for line in fh:
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("#"):
                has_data = True
                break
            header = stripped.lstrip("#").split()
    if not header:
        raise ConfigurationError(
            f"{log_path} has no header line ('# step time_fs ...' before the data); it is "
            "not a log written by 'mlmix run'")
    if not has_data:  # checked here: numpy only warns about an empty table
        raise ConfigurationError(
            f"{log_path} has no data rows (only the header); the run recorded nothing yet")
    try:
        data = np.loadtxt(log_path, comments="#", ndmin=2)
    except ValueError as exc:
        raise ConfigurationError(f"{log_path}: not a numeric table: {exc}") from None
    if data.shape[1] != len(header):
        raise ConfigurationError(
            f"{log_path}: the header names {len(header)} columns but the rows have "
            f"{data.shape[1]}")
    return header, data


def plot_log(log_path: str | Path, path: str | Path) -> None:
    """Plot a run log into a PNG at ``path``: one panel per quantity against time.

    Panels (each when its columns are present): temperature (K); atom counts
    (n_core, n_weighted, n_expensive, n_cheap); wall seconds per step; the drift
    estimate (eV/ps, when any value is finite). A relaxation log gets the maximum
    force (eV/Å, log scale) instead of the temperature. The horizontal axis is
    ``time_fs`` when the log has it, else its first column (step or iteration).
    """
    header, data = read_log(log_path)
    col = {name: data[:, k] for k, name in enumerate(header)}
    if "time_fs" in col:
        t, t_label = col["time_fs"], "time (fs)"
    else:
        t, t_label = data[:, 0], header[0]

    panels = []  # (title/ylabel, [(label, values)], log scale)
    if "temperature_K" in col:
        panels.append(("temperature (K)", [("T", col["temperature_K"])], False))
    if "fmax_eV_per_A" in col:
        panels.append(("max force (eV/Å)", [("fmax", col["fmax_eV_per_A"])], True))
    counts = [(name, col[name]) for name in COUNT_COLUMNS if name in col]
    if counts:
        panels.append(("atoms", counts, False))
    for name in ("seconds_per_step", "seconds_per_iteration"):
        if name in col and np.isfinite(col[name]).any():
            panels.append((name.replace("_", " ") + " (s)", [(name, col[name])], False))
    if "drift_eV_per_ps" in col and np.isfinite(col["drift_eV_per_ps"]).any():
        panels.append(("drift estimate (eV/ps)", [("drift", col["drift_eV_per_ps"])], False))
    if not panels:
        raise ConfigurationError(
            f"{log_path} has none of the columns plot_log draws (temperature_K, "
            f"fmax_eV_per_A, {', '.join(COUNT_COLUMNS)}, seconds_per_step, "
            f"drift_eV_per_ps); its header is {header}")

    fig, axes = _figure(6.5, 2.0 * len(panels) + 0.6, nrows=len(panels), sharex=True)
    marker = "o" if len(t) < 50 else None
    for ax, (label, series, log) in zip(axes[:, 0], panels):
        for name, y in series:
            ok = np.isfinite(y)
            ax.plot(t[ok], y[ok], marker=marker, ms=3, label=name)
        if log:
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8, ncols=len(series))
        ax.set_ylabel(label)
    axes[-1, 0].set_xlabel(t_label)
    axes[0, 0].set_title(Path(log_path).name)
    _save(fig, path)


# --------------------------------------------------------------------------- NEB


def plot_neb(relative_eV: np.ndarray, path: str | Path) -> None:
    """Energy along an NEB band: ``(n_images,)`` eV relative to the first image."""
    relative_eV = np.asarray(relative_eV, dtype=float)
    fig, axes = _figure(4.5, 3.2)
    ax = axes[0, 0]
    ax.plot(np.arange(len(relative_eV)), relative_eV, "o-")
    ax.set_xlabel("image")
    ax.set_ylabel("E - E(initial), eV (expensive)")
    ax.set_title(f"barrier {relative_eV.max():.4f} eV")
    _save(fig, path)


# --------------------------------------------------------------------------- drift


def plot_drift(result, path: str | Path, note: str | None = None) -> None:
    """Plot a :class:`mlmix.drift.DriftResult` into a PNG at ``path``.

    Total, potential (expensive) and kinetic energy relative to the first frame, in
    eV, against time, with the least-squares line of the total; ``note`` is added to
    the title (e.g. that an NVT slope includes the thermostat's exchange).
    """
    t = result.time_fs
    total = result.total_energy_eV - result.total_energy_eV[0]
    fig, axes = _figure(6.5, 4.2)
    ax = axes[0, 0]
    ax.plot(t, result.potential_energy_eV - result.potential_energy_eV[0], lw=0.8,
            color="tab:blue", label="E_exp (all atoms)")
    ax.plot(t, result.kinetic_energy_eV - result.kinetic_energy_eV[0], lw=0.8,
            color="tab:orange", label="kinetic")
    ax.plot(t, total, lw=1.5, color="k", label="E_exp + kinetic")
    slope = result.slope_eV_per_ps / 1000.0  # eV/fs
    tc = t - t.mean()
    ax.plot(t, total.mean() + slope * tc, "--", color="tab:red",
            label=f"fit: {result.slope_eV_per_ps:.3g} ± "
                  f"{result.slope_stderr_eV_per_ps:.2g} eV/ps")
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("E - E(first frame) (eV)")
    title = (f"{result.n_atoms} atoms: {result.slope_meV_per_ps_per_atom:.3g} meV/ps/atom")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
