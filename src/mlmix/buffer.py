"""How wide the expensive buffer must be: the force error against the whole system.

With ``r_buff`` at least the expensive receptive field the forces on weighted atoms
are the whole-system forces; below it (the only affordable choice for a
message-passing model with a 20-25 Å receptive field, or a carved cluster) they are
approximate, and the error must be measured. :func:`scan_buffers` measures it on one
structure: for each ``r_buff`` it builds the regions (no skin, so the error is the
one at that buffer exactly), evaluates the expensive potential on the evaluation set
and compares with one whole-system evaluation.

Error measures (eV/Å), over the weighted atoms (p > 0):
- ``error``: max of p_i |F_i - F_i^full|, the error the mixed force inherits (the
  tolerance applies to it);
- ``core_error``: max of |F_i - F_i^full| over the core (p = 1);
- ``rms_error``: root mean square of p_i |F_i - F_i^full|.

A point whose evaluation set wraps around the cell (``wraps``: it does not fit as a
finite cluster, :func:`mlmix.carving.fits_as_cluster`) measures this cell only: a
carved cluster then keeps the cell and lacks just the atoms beyond the set's reach
on every side at once, so in a larger cell the same ``r_buff`` misses more (EMT on
clusters of Cu: 0.012 eV/Å at 5 Å wrapping a 14 Å cell, 0.017 not wrapping a 22 Å
one). :attr:`BufferScan.recommended` holds for the scanned structure itself
(``r_buff = "auto"``); :attr:`BufferScan.recommended_beyond_this_cell` uses only the
points that do not wrap (and the exact ones).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .carving import fits_as_cluster
from .errors import ConfigurationError
from .potentials.base import Potential, exact_r_buff
from .regions import RegionSpec, RegionTracker
from .seeds import Seeds

DEFAULT_TOLERANCE = 0.05  # eV/Å


@dataclass(frozen=True)
class BufferPoint:
    """One buffer width and what it cost and missed (see the module docstring)."""

    r_buff: float  # Å
    error: float  # eV/Å
    core_error: float  # eV/Å
    rms_error: float  # eV/Å
    n_weighted: int
    n_expensive: int  # atoms in the evaluation set
    n_evaluated: int  # atoms the expensive potential evaluated (its cost)
    seconds: float
    wraps: bool = False  # the evaluation set wraps around the cell (module docstring)


@dataclass(frozen=True)
class BufferScan:
    """The force error against ``r_buff`` on one structure.

    Attributes:
        points: one :class:`BufferPoint` per scanned ``r_buff``, increasing.
        tolerance: eV/Å, the largest acceptable ``error``.
        exact_r_buff: Å, where the forces become exact (None: never).
        reference_seconds: the whole-system evaluation's wall time.
        potential: the expensive potential's name.
    """

    points: tuple[BufferPoint, ...]
    tolerance: float
    exact_r_buff: float | None
    reference_seconds: float
    potential: str

    @property
    def recommended(self) -> float | None:
        """Å, the smallest scanned ``r_buff`` from which on every scanned width meets the
        tolerance on this structure; None if the widest does not."""
        return _smallest_holding(self.points, self.tolerance)

    @property
    def recommended_beyond_this_cell(self) -> float | None:
        """Å, as :attr:`recommended` over the points whose evaluation set does not wrap
        around the cell: the error measured there does not depend on the cell being
        this small, so it holds for a larger cell of the same structure (so do the
        points at or beyond :attr:`exact_r_buff`, exact in any cell)."""
        exact = self.exact_r_buff
        return _smallest_holding([p for p in self.points if not p.wraps
                                  or exact is not None and p.r_buff >= exact],
                                 self.tolerance)

    def error_at(self, r_buff: float) -> float:
        """eV/Å, the measured ``error`` at a scanned ``r_buff``."""
        for point in self.points:
            if point.r_buff == r_buff:
                return point.error
        raise KeyError(r_buff)

    def to_dict(self) -> dict:
        return {"potential": self.potential, "tolerance_eV_per_A": self.tolerance,
                "exact_r_buff_A": self.exact_r_buff, "recommended_r_buff_A": self.recommended,
                "recommended_beyond_this_cell_r_buff_A": self.recommended_beyond_this_cell,
                "reference_seconds": self.reference_seconds,
                "points": [asdict(p) for p in self.points]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        """A plain-text table, one row per buffer, and the recommendation."""
        rows = [f"{'r_buff/Å':>8} {'error':>10} {'core':>10} {'rms':>10} {'expensive':>9} "
                f"{'evaluated':>9} {'s':>7}   (eV/Å; error = max p|F - F_full|)"]
        for p in self.points:
            rows.append(f"{p.r_buff:8.2f} {p.error:10.4g} {p.core_error:10.4g} "
                        f"{p.rms_error:10.4g} {p.n_expensive:9d} {p.n_evaluated:9d} "
                        f"{p.seconds:7.2f}" + ("  wraps" if p.wraps else ""))
        rec = self.recommended
        rows.append(f"whole system: {self.reference_seconds:.2f} s; exact from r_buff = "
                    f"{self.exact_r_buff if self.exact_r_buff is not None else 'never'}")
        rows.append(f"recommended r_buff for error <= {self.tolerance:g} eV/Å: "
                    + (f"{rec:g} Å" if rec is not None else
                       "none of these (scan wider buffers, or loosen the tolerance)"))
        if any(p.wraps for p in self.points):
            beyond = self.recommended_beyond_this_cell
            rows.append("wraps: the evaluation set wraps around this cell, so its error "
                        "holds for this cell only (a larger cell misses more); for larger "
                        "cells: " + (f"{beyond:g} Å" if beyond is not None else
                                     "none of these (scan in a larger cell)"))
        return "\n".join(rows)


def _smallest_holding(points, tolerance: float) -> float | None:
    """The smallest ``r_buff`` of ``points`` (increasing) from which on every point's
    error is within ``tolerance``; None if the last one's is not."""
    best = None
    for point in reversed(points):
        if point.error > tolerance:
            break
        best = point.r_buff
    return best


def default_buffers(potential: Potential, step: float = 1.0) -> list[float]:
    """0 Å to the exact buffer (else the receptive field) in ``step`` Å steps."""
    top = exact_r_buff(potential) or float(potential.receptive_field)
    return [float(x) for x in np.unique(np.append(np.arange(0.0, top, step), top))]


def scan_buffers(atoms: Atoms, expensive: Potential, spec: RegionSpec, seeds: Seeds,
                 buffers=None, tolerance: float = DEFAULT_TOLERANCE) -> BufferScan:
    """Measure the force error on weighted atoms against ``r_buff`` (module docstring).

    Args:
        atoms: the structure (not modified).
        expensive: the expensive potential.
        spec: r_core, r_blend and blend shape (its r_buff is ignored).
        seeds: where the core starts.
        buffers: r_buff values in Å; default :func:`default_buffers`.
        tolerance: eV/Å, > 0.
    """
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ConfigurationError(f"tolerance must be > 0 eV/Å, got {tolerance!r}")
    buffers = default_buffers(expensive) if buffers is None else sorted(map(float, buffers))
    if not buffers or any(not np.isfinite(b) or b < 0 for b in buffers):
        raise ConfigurationError(f"buffers must be a non-empty list of r_buff >= 0 Å, got "
                                 f"{buffers!r}")
    start = time.perf_counter()
    full = expensive.evaluate(atoms).forces
    reference_seconds = time.perf_counter() - start
    points = []
    for r_buff in buffers:
        tracker = RegionTracker(RegionSpec(spec.r_core, spec.r_blend, r_buff, spec.blend),
                                seeds, nevery=0, skin=0.0)
        regions = tracker.update(atoms, 0)
        weighted = regions.p > 0
        if not weighted.any():
            raise ConfigurationError("the seeds select no atom of this structure: nothing "
                                     "to measure")
        start = time.perf_counter()
        ev = expensive.evaluate(atoms, regions.expensive)
        seconds = time.perf_counter() - start
        miss = np.linalg.norm(ev.forces - full, axis=1)
        weighted_miss = regions.p[weighted] * miss[weighted]
        points.append(BufferPoint(
            r_buff=r_buff, error=float(weighted_miss.max()),
            core_error=float(miss[regions.p >= 1].max(initial=0.0)),
            rms_error=float(np.sqrt(np.mean(weighted_miss ** 2))),
            n_weighted=int(weighted.sum()), n_expensive=int(regions.expensive.sum()),
            n_evaluated=int(ev.n_evaluated), seconds=seconds,
            wraps=not fits_as_cluster(atoms, regions.expensive, expensive.cutoff)))
    return BufferScan(tuple(points), float(tolerance), exact_r_buff(expensive),
                      reference_seconds, expensive.name)


# --------------------------------------------------------------------------- command


def main(args) -> int:
    """``mlmix buffer CONFIG``: the scan on the config's initial structure."""
    from .potentials.factory import make_potential
    from .run import load_run_config
    from .runconfig import build_seeds, build_spec, build_structure

    cfg = load_run_config(args.config)
    tolerance = args.tolerance if args.tolerance is not None else cfg.regions.get(
        "force_tolerance", DEFAULT_TOLERANCE)
    if args.json is not None and Path(args.json).exists():
        raise ConfigurationError(f"--json {args.json} exists; choose another path (mlmix "
                                 "does not overwrite a file it did not make)")
    structure = cfg.built if cfg.built is not None else build_structure(cfg.structure)
    with make_potential(cfg.expensive, "potentials.expensive") as expensive:
        spec = build_spec(cfg, expensive)
        scan = scan_buffers(structure.atoms, expensive, spec, build_seeds(cfg.seeds, structure),
                            args.buffers, tolerance)
    print(f"{expensive.name} on {len(structure.atoms)} atoms of {args.config}")
    print(scan.table())
    if args.json is not None:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(scan.to_json() + "\n")
        tmp.replace(path)
        print(f"written: {path}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "buffer", help="measure the force error against the expensive buffer r_buff",
        description="Evaluate the expensive potential of a run config on its initial "
        "structure, once on the whole system and once per r_buff on the evaluation set, "
        "and print the force error on weighted atoms (eV/Å) and the smallest r_buff that "
        "meets the tolerance. `r_buff = \"auto\"` in [regions] does the same at the start "
        "of a run.")
    p.add_argument("config", help="a run config (see examples/run-*.toml)")
    p.add_argument("--buffers", type=float, nargs="+", metavar="R",
                   help="r_buff values in Å (default: 0 to the exact buffer in 1 Å steps)")
    p.add_argument("--tolerance", type=float, metavar="EV_PER_A",
                   help=f"force tolerance in eV/Å (default: regions.force_tolerance, else "
                   f"{DEFAULT_TOLERANCE})")
    p.add_argument("--json", metavar="FILE", help="also write the scan as JSON to FILE")
    p.set_defaults(func=main)
