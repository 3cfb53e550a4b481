"""`mlmix drift RUN_DIR`: the energy drift of an MD run, measured honestly.

Mixed forces are not the gradient of any energy (method.md §4), so a mixed run has
no conserved quantity to watch. The one honest total-energy measure is to take the
saved frames and re-evaluate them: the expensive potential's energy of *all* atoms
plus the kinetic energy,

    E_tot(t) = E_exp(x(t)) + sum_i |p_i(t)|^2 / (2 m_i),

and fit a straight line E_tot = a + b t by least squares. The slope b (eV/ps) is the
drift. Under NVE with a conservative force field, velocity Verlet keeps E_tot in a
band of width O(dt^2) with no trend, so b is near 0 (set by the band width over the
run's length); force mixing adds a trend that grows with the mismatch of the two
potentials (it is the work of F_mixed - F_exp on the moving atoms).

Under NVT the thermostat exchanges energy with the atoms by design. The slope is then
still computed (it is what happened to E_tot), but it *includes the thermostat's
exchange and is not the mixing error*: a thermostat that absorbs the heat of mixing
makes it look small. ``drift.json`` (``includes_thermostat``, ``note``) and the
printed text say so. Relaxations and NEB have no dynamics and are refused.

When the potentials disagree, E_tot also steps up or down during the first ~100 fs,
while the cheap region's configurations become thermal (their expensive energy is
not the cheap one); ``--start-fs`` leaves that transient out of the fit.

Time comes from each frame's ``atoms.info["time_fs"]``; kinetic energies use the
frame's momenta (ASE units) and ASE's standard masses (what ``mlmix run`` uses).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import ConfigurationError
from .potentials.base import Potential

MIN_FRAMES = 3  # a line through 2 points has no residual, hence no error estimate
NVT_NOTE = ("ensemble nvt: this slope includes the energy the thermostat exchanged with "
            "the atoms and is NOT the mixing error (a thermostat that absorbs the heat of "
            "mixing makes it look small); rerun as NVE to measure the mixing drift")
NVE_NOTE = ("ensemble nve: the slope is the drift of E_exp(all atoms) + KE along the "
            "mixed trajectory, i.e. the energy error of force mixing plus the "
            "integrator's (small, no trend for a conservative force field)")


@dataclass(frozen=True)
class DriftResult:
    """Total energy of saved frames and its least-squares slope.

    Attributes (n = number of frames):
        time_fs: ``(n,)`` fs, simulated time of each frame.
        potential_energy_eV: ``(n,)`` eV, expensive potential on all atoms.
        kinetic_energy_eV: ``(n,)`` eV, from the frames' momenta.
        total_energy_eV: ``(n,)`` eV, the sum of the two.
        slope_eV_per_ps: eV/ps, slope of the least-squares line through
            ``total_energy_eV`` against time.
        slope_stderr_eV_per_ps: eV/ps, its standard error from the residuals,
            assuming independent residuals (MD energies are correlated in time, so
            this is a lower bound on the real uncertainty).
        slope_meV_per_ps_per_atom: meV/ps/atom, ``slope_eV_per_ps`` per atom.
        n_frames: n.
        n_atoms: atoms per frame.
    """

    time_fs: np.ndarray
    potential_energy_eV: np.ndarray
    kinetic_energy_eV: np.ndarray
    total_energy_eV: np.ndarray
    slope_eV_per_ps: float
    slope_stderr_eV_per_ps: float
    slope_meV_per_ps_per_atom: float
    n_frames: int
    n_atoms: int

    def as_dict(self) -> dict:
        """JSON-ready: arrays as lists, numbers as floats."""
        return {
            "slope_eV_per_ps": self.slope_eV_per_ps,
            "slope_stderr_eV_per_ps": self.slope_stderr_eV_per_ps,
            "slope_meV_per_ps_per_atom": self.slope_meV_per_ps_per_atom,
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "time_fs": self.time_fs.tolist(),
            "potential_energy_eV": self.potential_energy_eV.tolist(),
            "kinetic_energy_eV": self.kinetic_energy_eV.tolist(),
            "total_energy_eV": self.total_energy_eV.tolist(),
        }


def linear_fit(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line ``y = a + b t``: returns ``(a, b, stderr of b)``.

    ``t`` and ``y`` are ``(n,)`` with n >= 3 and at least two distinct times. The
    standard error is ``sqrt(SSR / (n - 2) / sum (t - mean t)^2)``. Both series are
    centred first, which keeps large absolute energies from costing precision.
    """
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    tc, yc = t - t.mean(), y - y.mean()
    stt = float(tc @ tc)
    b = float(tc @ yc) / stt
    a = float(y.mean() - b * t.mean())
    residual = yc - b * tc
    stderr = float(np.sqrt((residual @ residual) / (len(t) - 2) / stt))
    return a, b, stderr


def _frame_times(frames: Sequence[Atoms]) -> np.ndarray:
    missing = [k for k, at in enumerate(frames) if "time_fs" not in at.info]
    if missing:
        raise ConfigurationError(
            f"{len(missing)} of {len(frames)} frames have no atoms.info['time_fs'] (first: "
            f"frame {missing[0]}); set it (fs) on each frame, as 'mlmix run' does")
    t = np.array([float(at.info["time_fs"]) for at in frames])
    if not np.isfinite(t).all() or np.any(np.diff(t) <= 0):
        raise ConfigurationError(
            f"frame times must be finite and strictly increasing, got time_fs = "
            f"{t[:6].tolist()}{' ...' if len(t) > 6 else ''}; pass frames in time order "
            "without repeats")
    return t


def check_frames(frames: Sequence[Atoms]) -> np.ndarray:
    """Check frames for a drift measurement (before any work); returns their times, fs."""
    if len(frames) < MIN_FRAMES:
        raise ConfigurationError(
            f"the drift needs at least {MIN_FRAMES} frames (a fitted line and its error), "
            f"got {len(frames)}; save frames more often (output.trajectory_every), run "
            "longer, or use a smaller --every or --start-fs")
    no_momenta = [k for k, at in enumerate(frames) if "momenta" not in at.arrays]
    if no_momenta:
        raise ConfigurationError(
            f"{len(no_momenta)} of {len(frames)} frames have no momenta (first: frame "
            f"{no_momenta[0]}), so their kinetic energy is unknown; the drift needs MD "
            "frames written with momenta (as 'mlmix run' writes them)")
    sizes = sorted({len(at) for at in frames})
    if len(sizes) > 1:
        raise ConfigurationError(
            f"frames have different numbers of atoms ({sizes}); a total energy is only "
            "comparable between frames of the same system")
    return _frame_times(frames)


def drift_from_frames(frames: Sequence[Atoms], expensive: Potential) -> DriftResult:
    """Re-evaluate ``frames`` with ``expensive`` and fit the drift of E_exp + KE.

    Args:
        frames: MD frames in time order, each with ``momenta`` (ASE units) and
            ``info["time_fs"]`` (fs); at least 3, all with the same atoms.
        expensive: the potential whose total energy (all atoms, no mask) is used.

    Returns:
        A :class:`DriftResult` (energies eV, times fs, slopes eV/ps).
    """
    t = check_frames(frames)
    for at in frames:  # every frame, before the first (expensive) evaluation
        expensive.check_atoms(at)
    epot = np.array([float(expensive.evaluate(at).energies.sum()) for at in frames])
    ekin = np.array([float(at.get_kinetic_energy()) for at in frames])
    total = epot + ekin
    _, slope, stderr = linear_fit(t, total)
    n_atoms = len(frames[0])
    per_ps = 1000.0  # fs per ps: eV/fs -> eV/ps
    return DriftResult(
        time_fs=t, potential_energy_eV=epot, kinetic_energy_eV=ekin, total_energy_eV=total,
        slope_eV_per_ps=slope * per_ps, slope_stderr_eV_per_ps=stderr * per_ps,
        slope_meV_per_ps_per_atom=slope * per_ps * 1000.0 / n_atoms,
        n_frames=len(frames), n_atoms=n_atoms)


# --------------------------------------------------------------------------- run dir


def _run_task(run_dir: Path) -> tuple[dict, dict]:
    """``(task, expensive description)`` from ``RUN_DIR/config.toml``, checked."""
    from .config import load_toml

    path = run_dir / "config.toml"
    if not path.is_file():
        raise ConfigurationError(
            f"{path} not found: {run_dir} is not an 'mlmix run' output directory")
    raw = load_toml(path)
    task = raw.get("task")
    expensive = (raw.get("potentials") or {}).get("expensive")
    if not isinstance(task, dict) or not isinstance(expensive, dict):
        raise ConfigurationError(
            f"{path} has no [task] or [potentials.expensive] table; it is not a config "
            "written by 'mlmix run'")
    if task.get("kind") != "md":
        raise ConfigurationError(
            f"{run_dir} is a {task.get('kind')!r} run; the energy drift is defined for MD "
            "runs only (relaxations and NEB have no dynamics)")
    return task, expensive


def read_frames(path: Path, every: int = 1) -> list[Atoms]:
    """Every ``every``-th frame of an extended-XYZ trajectory (the first included).

    Frames are streamed and kept slim (numbers, positions, cell, pbc, momenta, info):
    the drift needs nothing else, and a long trajectory of a large system then fits
    in memory.
    """
    from ase.io import iread

    if not path.is_file():
        raise ConfigurationError(f"{path} not found; the run wrote no trajectory")
    if path.stat().st_size == 0:
        return []
    frames = []
    for at in iread(path, index=f"::{every}", format="extxyz"):
        slim = Atoms(at.numbers, at.positions, cell=at.cell, pbc=at.pbc)
        if "momenta" in at.arrays:
            slim.arrays["momenta"] = at.arrays["momenta"]
        slim.info.update(at.info)
        frames.append(slim)
    return frames


def run_drift(run_dir: str | Path, every: int = 1, start_fs: float = 0.0) -> dict:
    """Drift of an ``mlmix run`` MD directory; writes ``drift.json`` and ``drift.png``.

    Args:
        run_dir: the run directory (``config.toml`` and ``trajectory.extxyz``).
        every: use every ``every``-th saved frame (the cost is one expensive
            evaluation of the whole system per frame used).
        start_fs: fs, ignore frames before this time. When the two potentials
            disagree, E_exp + KE jumps during the first ~100 fs while the cheap
            region equilibrates (the expensive energy of configurations sampled by
            the cheap potential); that step is not a drift and would bias the slope.

    Returns:
        The content of ``drift.json``: the :class:`DriftResult` numbers and series,
        the ensemble, ``includes_thermostat`` and a ``note`` on what the number means.
    """
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ConfigurationError(f"every must be an integer >= 1, got {every!r}")
    if not np.isfinite(start_fs) or start_fs < 0:
        raise ConfigurationError(f"start_fs must be a time >= 0 fs, got {start_fs!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigurationError(f"run directory {run_dir} not found")
    from .rundir import writability_problem

    unwritable = writability_problem(run_dir)
    if unwritable:  # said before the expensive re-evaluation, not after it
        raise ConfigurationError(f"cannot write drift.json into {run_dir}: {unwritable}")
    task, spec = _run_task(run_dir)
    frames = [at for at in read_frames(run_dir / "trajectory.extxyz", every)
              if float(at.info.get("time_fs", np.inf)) >= start_fs]
    check_frames(frames)  # before the potential is built
    from .potentials.factory import make_potential

    expensive = make_potential(spec, "potentials.expensive")
    try:
        result = drift_from_frames(frames, expensive)
    finally:
        expensive.close()
    ensemble = task.get("ensemble", "nve")
    thermostat = ensemble != "nve"
    report = {
        "measure": "E_exp(all atoms) + KE, re-evaluated on saved frames; least-squares slope",
        "ensemble": ensemble,
        "includes_thermostat": thermostat,
        "note": NVT_NOTE if thermostat else NVE_NOTE,
        "every": int(every),
        "start_fs": float(start_fs),
        "expensive": spec,
        **result.as_dict(),
    }
    from .figures import plot_drift
    from .rundir import RunDirectory, output_errors

    outdir = RunDirectory(run_dir, "run")
    files = [outdir.file(name) if outdir.marked else run_dir / name
             for name in ("drift.json", "drift.png")]
    with output_errors(files[0]):
        files[0].write_text(json.dumps(report, indent=2) + "\n")
    with output_errors(files[1]):
        plot_drift(result, files[1], note="includes thermostat exchange (NVT)"
                   if thermostat else None)
    return report


def format_report(report: dict) -> str:
    """Human-readable summary of :func:`run_drift`'s result."""
    lines = []
    if report["includes_thermostat"]:
        lines.append("WARNING: " + report["note"])
    span = f"{report['time_fs'][0]:g}-{report['time_fs'][-1]:g} fs"
    lines += [
        (f"drift of E_exp + KE over {report['n_frames']} frames ({span}, "
         f"{report['n_atoms']} atoms, ensemble {report['ensemble']}):"),
        (f"  {report['slope_eV_per_ps']:.4g} +- {report['slope_stderr_eV_per_ps']:.2g} eV/ps"
         f"  ({report['slope_meV_per_ps_per_atom']:.4g} meV/ps/atom)"),
    ]
    if not report["includes_thermostat"]:
        lines.append("  " + report["note"])
    return "\n".join(lines)


def main(args) -> int:
    report = run_drift(args.run_dir, every=args.every, start_fs=args.start_fs)
    print(format_report(report))
    print(f"  wrote {Path(args.run_dir) / 'drift.json'} and drift.png")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "drift", help="energy drift of an MD run: expensive potential re-evaluated on its frames")
    p.add_argument("run_dir", help="an 'mlmix run' MD output directory")
    p.add_argument("--every", type=int, default=1,
                   help="use every K-th saved frame (one expensive evaluation per frame used)")
    p.add_argument("--start-fs", type=float, default=0.0, metavar="T",
                   help="ignore frames before T fs (the equilibration of the cheap region)")
    p.set_defaults(func=main)
