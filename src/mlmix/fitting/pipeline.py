"""The distillation pipeline behind ``mlmix fit CONFIG`` (method.md §5).

1. Relax the expensive bulk cell (lattice and internal coordinates).
2. Hard set: strained copies of it (6 types x 17 values within +-0.5 % by default),
   labelled by the expensive potential; targets are energy differences per atom from
   the unstrained cell.
3. Soft set: MD frames at a temperature (driven by the expensive potential or a named
   cheaper driver, relabelled by the expensive one) plus any extended-XYZ files given;
   a fraction is held out for the report.
4. Fit the cheap linear model twice on the same soft data: unconstrained (ridge) and
   with the hard constraint ``||A_H c - y_H|| <= alpha`` (or exactly, ``alpha = 0``).
5. Write both potentials (LAMMPS files), the constrained model's uncertainty file
   (``<stem>.uncertainty.npz``: its training environments' active sets, for the
   ``uncertainty`` seed classifier, :mod:`mlmix.fitting.uncertainty`) and a report
   (JSON and PNG) comparing the expensive potential with both fits.

Labels are cached on disk (``<output>/cache``), so an interrupted run resumes where it
stopped. Everything else is written to a temporary folder that replaces the output
folder's results only at the end, so a failed run leaves no half-written output.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk

from ..config import Problems, load_toml
from ..errors import CalculationError, ConfigurationError
from ..potentials.base import Potential
from ..potentials.factory import check_potential_spec, make_potential
from ..rundir import RunDirectory
from ..schema import FIT, choices, default, known_keys
from . import data, elastic, report, solvers
from .model import LinearModel
from .uncertainty import SUFFIX as UNCERTAINTY_SUFFIX
from .uncertainty import build_uncertainty, uncertainty_summary

STRAIN_TYPES = data.DEFAULT_STRAIN_TYPES


@dataclass
class FitConfig:
    """A checked fit configuration (see ``examples/fit-si.toml`` for the file form).

    Lengths Å, energies eV, temperatures K, times fs. Defaults are those the file's
    schema declares (:data:`mlmix.schema.FIT`).
    """

    expensive: dict
    element: str
    crystal: str
    a: float
    repeat: int
    model: dict
    output: Path
    strain_types: tuple[str, ...] = STRAIN_TYPES
    n_strains: int = default(FIT, "hard", "n_strains")
    max_strain: float = default(FIT, "hard", "max_strain")
    temperature_K: float = default(FIT, "soft", "temperature_K")
    n_frames: int = default(FIT, "soft", "n_frames")
    interval: int = default(FIT, "soft", "interval")
    timestep_fs: float = default(FIT, "soft", "timestep_fs")
    driver: dict | None = None
    extra_files: tuple[Path, ...] = ()
    test_fraction: float = default(FIT, "soft", "test_fraction")
    seed: int = default(FIT, "soft", "seed")
    alpha: float = default(FIT, "fit", "alpha")
    method: str = default(FIT, "fit", "method")
    energy_weight: float = default(FIT, "fit", "energy_weight")
    force_weight: float = default(FIT, "fit", "force_weight")
    reg: float = default(FIT, "fit", "reg")
    zero_columns: str = default(FIT, "fit", "zero_columns")
    vacancy: bool = default(FIT, "report", "vacancy")
    elastic: bool = default(FIT, "report", "elastic")
    elastic_delta: float = default(FIT, "report", "elastic_delta")
    stem: str = default(FIT, "output", "stem")
    extras: dict = field(default_factory=dict)


def _d(section: str, key: str) -> Any:
    """The declared default of a fit-config key (:data:`mlmix.schema.FIT`)."""
    return default(FIT, section, key)


def _get(table: Mapping, section: str, key: str) -> Any:
    return table.get(key, _d(section, key))


def parse_config(cfg: Mapping, base: Path = Path("."), source: str = "fit config") -> FitConfig:
    """Check a fit configuration completely; all problems are raised in one message."""
    p = Problems(source)
    p.unknown_keys(cfg, "(top level)", known_keys(FIT, ""))
    check_potential_spec(cfg.get("expensive"), "expensive", p)
    s = p.section(cfg, "structure")
    hard = p.section(cfg, "hard", required=False)
    soft = p.section(cfg, "soft", required=False)
    model = p.section(cfg, "model")
    fit = p.section(cfg, "fit", required=False)
    rep = p.section(cfg, "report", required=False)
    out = p.section(cfg, "output")

    p.unknown_keys(s, "structure", known_keys(FIT, "structure"))
    if not isinstance(s.get("element"), str):
        p.add("structure.element", "missing: an element symbol such as 'Si'")
    p.choice(s, "structure", "crystal", choices(FIT, "structure", "crystal"))
    p.number(s, "structure", "a", minimum=0, strict=True)
    p.number(s, "structure", "repeat", default(FIT, "structure", "repeat"), minimum=1,
             integer=True)

    p.unknown_keys(hard, "hard", known_keys(FIT, "hard"))
    types = tuple(hard.get("strain_types", STRAIN_TYPES))
    for t in types:
        if t not in data.STRAIN_TYPES:
            p.add("hard.strain_types",
                  f"unknown strain type {t!r} (known: {', '.join(data.STRAIN_TYPES)})")
    p.number(hard, "hard", "n_strains", default(FIT, "hard", "n_strains"), minimum=3,
             integer=True)
    strain = p.number(hard, "hard", "max_strain", default(FIT, "hard", "max_strain"), minimum=0,
                      strict=True)
    if strain is not None and strain > data.MAX_STRAIN:
        p.add("hard.max_strain", f"must be at most {data.MAX_STRAIN} (the elastic regime), got {strain}")

    p.unknown_keys(soft, "soft", known_keys(FIT, "soft"))
    p.number(soft, "soft", "temperature_K", _d("soft", "temperature_K"), minimum=0, strict=True)
    p.number(soft, "soft", "n_frames", _d("soft", "n_frames"), minimum=2, integer=True)
    p.number(soft, "soft", "interval", _d("soft", "interval"), minimum=1, integer=True)
    dt = p.number(soft, "soft", "timestep_fs", _d("soft", "timestep_fs"), minimum=0, strict=True)
    if dt is not None and dt > data.MAX_TIMESTEP_FS:
        p.add("soft.timestep_fs", f"must be at most {data.MAX_TIMESTEP_FS} fs, got {dt}")
    p.number(soft, "soft", "seed", _d("soft", "seed"), integer=True)
    frac = p.number(soft, "soft", "test_fraction", _d("soft", "test_fraction"), minimum=0,
                    strict=True)
    if frac is not None and frac >= 1:
        p.add("soft.test_fraction", f"must be below 1, got {frac}")
    if soft.get("driver") is not None:
        check_potential_spec(soft["driver"], "soft.driver", p)
    extra = tuple(base / f for f in soft.get("extra_files", []))
    for f in extra:
        if not f.is_file():
            p.add("soft.extra_files", f"file {str(f)!r} not found")

    family = p.choice(model, "model", "family", choices(FIT, "model", "family"))
    if family is not None:
        if not isinstance(model.get("species", [s.get("element")]), list):
            p.add("model.species", "must be a list of element symbols")
        # the model class's public arguments (its _private ones are for its file reader)
        accepted = {name for name in inspect.signature(model_class(family)).parameters
                    if not name.startswith("_")}
        p.unknown_keys(model, "model", accepted | known_keys(FIT, "model"))

    p.unknown_keys(fit, "fit", known_keys(FIT, "fit"))
    p.number(fit, "fit", "alpha", _d("fit", "alpha"), minimum=0)
    p.choice(fit, "fit", "method", choices(FIT, "fit", "method"), _d("fit", "method"))
    p.number(fit, "fit", "energy_weight", _d("fit", "energy_weight"), minimum=0, strict=True)
    p.number(fit, "fit", "force_weight", _d("fit", "force_weight"), minimum=0)
    p.number(fit, "fit", "reg", _d("fit", "reg"), minimum=0)
    p.choice(fit, "fit", "zero_columns", choices(FIT, "fit", "zero_columns"),
             _d("fit", "zero_columns"))

    p.unknown_keys(rep, "report", known_keys(FIT, "report"))
    for key in ("vacancy", "elastic"):
        p.flag(rep, "report", key, _d("report", key))
    delta = p.number(rep, "report", "elastic_delta", _d("report", "elastic_delta"), minimum=0,
                     strict=True)
    low, high = elastic.DELTA_RANGE
    if isinstance(delta, (int, float)) and not low <= delta <= high:
        p.add("report.elastic_delta", f"must lie in [{low:g}, {high:g}] (a strain step), got "
              f"{delta}; use 5e-3 for float32 models whose energies are quantised")
    p.unknown_keys(out, "output", known_keys(FIT, "output"))
    stem = out.get("stem", _d("output", "stem"))
    if not (isinstance(stem, str) and stem and "/" not in stem):
        p.add("output.stem", f"must be a file name stem such as 'cheap', got {stem!r}")
    if not isinstance(out.get("directory"), str):
        p.add("output.directory", "missing: the folder to write the potential and report to")
    p.raise_if_any()

    return FitConfig(
        expensive=dict(cfg["expensive"]), element=s["element"], crystal=s["crystal"],
        a=float(s["a"]), repeat=int(s.get("repeat", _d("structure", "repeat"))), model=dict(model),
        output=base / out["directory"], strain_types=types,
        n_strains=int(_get(hard, "hard", "n_strains")),
        max_strain=float(_get(hard, "hard", "max_strain")),
        temperature_K=float(_get(soft, "soft", "temperature_K")),
        n_frames=int(_get(soft, "soft", "n_frames")),
        interval=int(_get(soft, "soft", "interval")),
        timestep_fs=float(_get(soft, "soft", "timestep_fs")), driver=soft.get("driver"),
        extra_files=extra, test_fraction=float(_get(soft, "soft", "test_fraction")),
        seed=int(_get(soft, "soft", "seed")), alpha=float(_get(fit, "fit", "alpha")),
        method=_get(fit, "fit", "method"),
        energy_weight=float(_get(fit, "fit", "energy_weight")),
        force_weight=float(_get(fit, "fit", "force_weight")),
        reg=float(_get(fit, "fit", "reg")), zero_columns=_get(fit, "fit", "zero_columns"),
        vacancy=bool(_get(rep, "report", "vacancy")),
        elastic=bool(_get(rep, "report", "elastic")),
        elastic_delta=float(_get(rep, "report", "elastic_delta")),
        stem=_get(out, "output", "stem"),
    )


def model_class(family: str) -> Callable[..., LinearModel]:
    """The LinearModel class of a family name (imported on demand)."""
    if family == "snap":
        from .snap import SnapModel

        return SnapModel
    if family == "ace":
        from .ace_linear import AceLinearModel

        return AceLinearModel
    from .uf3 import Uf3Model

    return Uf3Model


def make_model(spec: Mapping, species: list[str]) -> LinearModel:
    """The cheap model a ``[model]`` table describes (keys checked by parse_config)."""
    params = {k: v for k, v in spec.items() if k not in ("family", "species")}
    return model_class(spec["family"])(list(spec.get("species", species)), **params)


# ----------------------------------------------------------------------- linear algebra


def hard_rows(model: LinearModel, frames: list[Atoms], reference: Atoms):
    """Rows and targets of the hard set: energy differences per atom from ``reference``."""
    dm = model.design_matrix([reference, *frames], forces=False)
    n = dm.n_atoms[:, None].astype(float)
    rows = dm.energy[1:] / n[1:] - dm.energy[0] / n[0]
    e_ref = reference.get_potential_energy() / len(reference)
    targets = np.array([f.get_potential_energy() / len(f) - e_ref for f in frames])
    return rows, targets


def soft_rows(model: LinearModel, frames: list[Atoms], energy_weight: float,
              force_weight: float):
    """Weighted rows and targets of the soft set: energies per atom and forces."""
    dm = model.design_matrix(frames, forces=force_weight > 0)
    n = dm.n_atoms[:, None].astype(float)
    rows = [energy_weight * dm.energy / n]
    targets = [energy_weight * np.array([f.get_potential_energy() / len(f) for f in frames])]
    if force_weight > 0 and dm.forces is not None:
        rows.append(force_weight * dm.forces)
        targets.append(force_weight * np.concatenate([f.get_forces().ravel() for f in frames]))
    return np.vstack(rows), np.concatenate(targets)


# ----------------------------------------------------------------------------- pipeline


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def generate_data(cfg: FitConfig, expensive: Potential, cache: data.LabelCache, progress=None):
    """Relaxed reference cell, hard set and soft set (labelled by the expensive potential)."""
    cell = bulk(cfg.element, cfg.crystal, a=cfg.a, cubic=True).repeat(cfg.repeat)
    _log(progress, f"relaxing the expensive {cfg.crystal} {cfg.element} cell ({len(cell)} atoms)")
    relaxed, _ = data.relax_bulk(cell, expensive)
    reference = cache.label([relaxed], expensive)[0]
    values = np.linspace(-cfg.max_strain, cfg.max_strain, cfg.n_strains)
    _log(progress, f"hard set: {len(cfg.strain_types)} strain types x {len(values)} values")
    hard = data.strained_set(relaxed, expensive, strain_types=cfg.strain_types, values=values,
                             cache=cache)
    driver = make_potential(cfg.driver, "soft.driver") if cfg.driver else expensive
    _log(progress, f"soft set: {cfg.n_frames} MD frames at {cfg.temperature_K} K")
    soft = data.md_frames(relaxed, driver, cfg.temperature_K, cfg.n_frames, cfg.interval,
                          cfg.timestep_fs, cfg.seed, relabel=expensive, cache=cache)
    for path in cfg.extra_files:
        soft += data.read_frames(path)
    return reference, hard, soft


def split(frames: list[Atoms], test_fraction: float, seed: int):
    """Random train/test split of frames (at least one of each)."""
    order = np.random.default_rng(seed).permutation(len(frames))
    n_test = min(max(1, int(round(test_fraction * len(frames)))), len(frames) - 1)
    return [frames[k] for k in order[n_test:]], [frames[k] for k in order[:n_test]]


def fit_models(model: LinearModel, reference: Atoms, hard: list[Atoms], train: list[Atoms], *,
               alpha: float, method: str = "lambda", energy_weight: float = 1.0,
               force_weight: float = 0.1, reg: float = 1e-8, zero_columns: str = "error"):
    """Unconstrained (ridge) and constrained coefficients on the same soft data.

    Args:
        reference: the unstrained cell, labelled; hard targets are energy differences
            per atom from it.
        alpha: eV/atom, tolerance on ``||A_H c - y_H||``; ``method="exact"`` (or
            alpha = 0) solves with the hard rows as equality constraints.
        zero_columns: ``"error"`` (default) refuses coefficients that no row
            determines, ``"zero"`` fixes them at 0 (ridge: columns zero in the soft
            rows; constrained: zero in soft and hard rows). Config: ``[fit] zero_columns``.

    Returns:
        ``(unconstrained coefficients, constrained FitResult, (A_H, y_H))``.
    """
    a_h, y_h = hard_rows(model, hard, reference)
    a_s, y_s = soft_rows(model, train, energy_weight, force_weight)
    unconstrained = solvers.ridge(a_s, y_s, reg=reg, zero_columns=zero_columns)
    if method == "exact" or alpha == 0:
        constrained = solvers.equality_constrained_fit(a_s, y_s, a_h, y_h, reg=reg,
                                                       zero_columns=zero_columns)
    else:
        constrained = solvers.constrained_fit(a_s, y_s, a_h, y_h, alpha, reg=reg,
                                              zero_columns=zero_columns)
    return unconstrained, constrained, (a_h, y_h)


def properties(potential: Potential, reference: Atoms, test: list[Atoms], cfg: FitConfig) -> dict:
    """Lattice parameter, elastic constants, RMSEs, vacancy energy of one potential."""
    relaxed, info = data.relax_bulk(reference, potential)
    out: dict[str, Any] = {"lattice_parameter_A": info.lattice_parameter}
    if cfg.elastic:
        # Internal relaxation to the hard set's own tolerance: the strain energies err
        # by ~fmax^2 / k (second order), and float32 models (SevenNet) cannot reach 1e-6.
        result = elastic.elastic_constants(relaxed, potential, delta=cfg.elastic_delta, fmax=1e-5)
        out["C_GPa"] = np.asarray(result.C).round(3).tolist()
        try:
            out["cubic"] = result.cubic().as_dict()
        except ConfigurationError as exc:
            out["cubic"] = None
            out["cubic_note"] = str(exc)
    out.update(report.rmse(potential, test))
    if cfg.vacancy:
        try:
            out["vacancy_formation_eV"] = report.vacancy_formation_energy(potential, relaxed)
        except CalculationError as exc:
            # A poor model may have no nearby vacancy minimum: say so, invent nothing.
            out["vacancy_formation_eV"] = None
            out["vacancy_note"] = str(exc)
    return out


def run(cfg: FitConfig, progress: Callable[[str], None] | None = print, *,
        resume: bool = False, overwrite: bool = False) -> dict:
    """Run the whole pipeline; returns the report dict (also written to disk).

    The output folder follows the rules of ``mlmix run`` (:mod:`mlmix.rundir`): a
    folder that exists and is not empty is refused unless ``resume`` (continue from
    the label cache of an earlier fit there) or ``overwrite`` (start again; only what
    mlmix wrote there is removed, and only if mlmix made the folder) is given.
    """
    t0 = time.perf_counter()
    with RunDirectory(cfg.output, "fit") as outdir:
        problems = outdir.check(resume=resume, overwrite=overwrite)
        if resume and overwrite:
            problems.insert(0, "--resume and --overwrite exclude each other")
        if problems:
            raise ConfigurationError("; ".join(problems))
        expensive = make_potential(cfg.expensive, "expensive")
        try:
            model = make_model(cfg.model, [cfg.element])
        except BaseException:
            expensive.close()
            raise
        try:
            outdir.open(overwrite=overwrite)
            outdir.file("cache")
            return _run(cfg, expensive, model, progress, t0, outdir)
        finally:
            expensive.close()
            getattr(model, "close", lambda: None)()


def _run(cfg: FitConfig, expensive: Potential, model: LinearModel, progress, t0: float,
         outdir: RunDirectory) -> dict:
    cache = data.LabelCache(cfg.output / "cache")
    reference, hard, soft = generate_data(cfg, expensive, cache, progress)
    train, test = split(soft, cfg.test_fraction, cfg.seed)
    _log(progress, f"fitting {model.name} ({model.n_coefficients} coefficients) on "
                   f"{len(train)} frames, {len(hard)} hard constraints")
    unconstrained, constrained, (a_h, y_h) = fit_models(
        model, reference, hard, train, alpha=cfg.alpha, method=cfg.method,
        energy_weight=cfg.energy_weight, force_weight=cfg.force_weight, reg=cfg.reg,
        zero_columns=cfg.zero_columns)

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cfg.output))
    pots: dict[str, Potential] = {}
    try:
        pots["constrained"] = model.potential(constrained.coefficients, staging, cfg.stem)
        _log(progress, "grading the training environments (uncertainty file)")
        # the staging folder holds the constrained potential's files only, so far
        unc = build_uncertainty(model, [reference, *hard, *train], test, model_spec=cfg.model,
                                potential_files=sorted(staging.iterdir()))
        unc.save(staging / f"{cfg.stem}{UNCERTAINTY_SUFFIX}")
        _log(progress, uncertainty_summary(unc))
        _log(progress, "computing properties for the report")
        models = {"expensive": properties(expensive, reference, test, cfg)}
        # The unconstrained fit is only a comparison: when it misbehaves (say, no
        # energy minimum, so the bulk relaxation runs away), the report says why and
        # the product is still written. Failures of the expensive potential or the
        # constrained model still end the run. LinAlgError: ASE's BFGS on non-finite
        # forces ("Eigenvalues did not converge").
        try:
            pots["unconstrained"] = model.potential(unconstrained, staging,
                                                    f"{cfg.stem}_unconstrained")
            models["unconstrained"] = properties(pots["unconstrained"], reference, test, cfg)
        except (CalculationError, ConfigurationError, np.linalg.LinAlgError) as exc:
            models["unconstrained"] = {"failed": f"{type(exc).__name__}: {exc}"}
            _log(progress, f"the unconstrained comparison model failed: {exc}")
        models["constrained"] = properties(pots["constrained"], reference, test, cfg)
        result = {
            "config": {"element": cfg.element, "crystal": cfg.crystal, "model": cfg.model,
                       "alpha_eV_per_atom": cfg.alpha, "method": cfg.method,
                       "zero_columns": cfg.zero_columns},
            "fit": {
                "lambda": constrained.lambda_,
                "hard_residual_norm_eV_per_atom": constrained.hard_residual_norm,
                "n_binding_constraints": int(np.sum(constrained.binding)),
                "unconstrained_hard_residual_norm_eV_per_atom":
                    float(np.linalg.norm(a_h @ unconstrained - y_h)),
                "n_hard": len(hard), "n_train_frames": len(train), "n_test_frames": len(test),
            },
            "models": models,
            "uncertainty": {"file": f"{cfg.stem}{UNCERTAINTY_SUFFIX}", "threshold": unc.threshold,
                            "heldout": unc.heldout},
            "files": sorted(p.name for p in staging.iterdir()),
            "seconds": time.perf_counter() - t0,
        }
        curves = strain_curves(hard, a_h, y_h, {"unconstrained": unconstrained,
                                                "constrained": constrained.coefficients})
        (staging / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        report.plot_report(result, curves, staging / "report.png")
        for path in staging.iterdir():
            os.replace(path, outdir.file(path.name))
    finally:
        for pot in pots.values():
            pot.close()
        shutil.rmtree(staging, ignore_errors=True)
    _log(progress, f"done in {time.perf_counter() - t0:.0f} s: {cfg.output}")
    return result


def strain_curves(hard: list[Atoms], a_h: np.ndarray, y_h: np.ndarray,
                  coefficients: Mapping) -> dict:
    """Energy-strain curves (eV/atom) of the expensive data and each fitted model."""
    curves: dict = {}
    for k, frame in enumerate(hard):
        kind = frame.info["strain_type"]
        entry = curves.setdefault(kind, {"strain": [], "expensive": [],
                                         **{name: [] for name in coefficients}})
        entry["strain"].append(frame.info["strain_value"])
        entry["expensive"].append(y_h[k])
        for name, c in coefficients.items():
            entry[name].append(float(a_h[k] @ c))
    return curves


def main(args) -> int:
    cfg = parse_config(load_toml(args.config), Path(args.config).parent, args.config)
    if args.output is not None:
        cfg.output = Path(args.output)
    run(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("fit", help="distil a cheap linear potential from an expensive one")
    p.add_argument("config", help="TOML file (see examples/fit-si.toml)")
    p.add_argument("--output", help="folder for the potential files and the report "
                   "(default: output.directory of the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit in its folder (labels are cached)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a folder an earlier fit made (only the files mlmix "
                   "wrote there are removed; a folder it did not make is refused)")
    p.set_defaults(func=main)
