"""Compare the expensive potential with the distilled cheap models: numbers and a figure.

Per model: lattice parameter (Å), elastic constants (6x6 Voigt, GPa; cubic summary where
cubic), energy and force RMSE on held-out frames (meV/atom, meV/Å), and the vacancy
formation energy (eV) when asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from ..errors import ConfigurationError
from ..potentials.base import Potential
from .data import relax_internal, total_energy


def rmse(potential: Potential, frames: Sequence[Atoms]) -> dict[str, float]:
    """Energy RMSE per atom (meV/atom) and force RMSE (meV/Å) against the frames' labels.

    Energies are compared after removing the mean offset per atom, since a cheap model
    fitted to energy differences need not share the expensive reference energy.
    """
    if not frames:
        raise ConfigurationError("no frames to compute an RMSE on")
    de_rows, df_rows = [], []
    for frame in frames:
        result = potential.evaluate(frame)
        de_rows.append((np.sum(result.energies) - frame.get_potential_energy()) / len(frame))
        df_rows.append((result.forces - frame.get_forces()).ravel())
    de = np.asarray(de_rows)
    df = np.concatenate(df_rows)
    return {
        "energy_rmse_meV_per_atom": float(1e3 * np.sqrt(np.mean((de - de.mean()) ** 2))),
        "energy_offset_meV_per_atom": float(1e3 * de.mean()),
        "force_rmse_meV_per_A": float(1e3 * np.sqrt(np.mean(df**2))),
    }


def vacancy_formation_energy(potential: Potential, bulk_cell: Atoms, fmax: float = 1e-3) -> float:
    """E_f = E(N-1, relaxed at fixed cell) - (N-1)/N E(N), eV, for a relaxed bulk cell.

    Raises:
        CalculationError: the vacancy cell did not relax to ``fmax`` (eV/Å); no energy
            of an unrelaxed structure is passed off as a formation energy.
    """
    n = len(bulk_cell)
    e_bulk = total_energy(potential, bulk_cell)
    vacancy = bulk_cell.copy()
    del vacancy[0]
    vacancy.rattle(1e-3, seed=0)  # break the symmetry that would stall the relaxation
    e_vac = total_energy(potential, relax_internal(vacancy, potential, fmax=fmax))
    return e_vac - (n - 1) / n * e_bulk


def plot_report(report: Mapping, curves: Mapping, path: Path) -> None:
    """Write the report figure (PNG).

    Args:
        report: the report dict (``models`` -> name -> properties, or
            ``{"failed": reason}`` for a model whose properties could not be
            computed: it gets no bars and "(failed)" in the legend).
        curves: strain type -> {"strain": (k,), model name -> (k,) energies, eV/atom,
            relative to the unstrained cell}.
        path: where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(curves)
    ncols = 4
    nrows = int(np.ceil((len(types) + 1) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    styles = {"expensive": dict(marker="o", ls="none", color="k"),
              "unconstrained": dict(ls="--", color="tab:red"),
              "constrained": dict(ls="-", color="tab:blue")}
    for ax, kind in zip(axes.flat, types):
        data = curves[kind]
        for name, style in styles.items():
            if name in data:
                ax.plot(100 * np.asarray(data["strain"]), 1e3 * np.asarray(data[name]),
                        label=name, **style)
        ax.set_title(kind)
        ax.set_xlabel("strain (%)")
        ax.set_ylabel("E - E0 (meV/atom)")
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[len(types)]
    names = [n for n in styles if n in report["models"]]
    keys = ["C11", "C12", "C44"]
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        props = report["models"][name]
        cubic = props.get("cubic") or {}
        values = [cubic.get(key, np.nan) for key in keys]
        ax.bar(np.arange(3) + k * width, values, width,
               label=f"{name} (failed)" if "failed" in props else name,
               color=styles[name].get("color"))
    ax.set_xticks(np.arange(3) + width * (len(names) - 1) / 2, keys)
    ax.set_ylabel("GPa")
    ax.legend(fontsize=8)
    for extra in axes.flat[len(types) + 1:]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
