"""Solvers of the constrained distillation (method.md §5) on synthetic problems, and
their zero_columns option as fit_models and a fit config offer it (real W data)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from ase.build import bulk

from mlmix.errors import ConfigurationError
from mlmix.fitting import data, pipeline
from mlmix.fitting.solvers import (
    FitResult,
    constrained_fit,
    equality_constrained_fit,
    ridge,
)
from mlmix.fitting.uf3 import Uf3Model
from mlmix.potentials.lammps import LammpsPotential


def _problem(seed=0, m_soft=300, m_hard=12, n=20, noise=0.05, spread=3.0):
    """Soft rows with noise (so the soft optimum misses the hard rows) and exact hard rows
    generated from a different 'true' model (the expensive potential is not in the
    cheap model's span)."""
    rng = np.random.default_rng(seed)
    c_true = rng.normal(size=n)
    # Very different column scales, as energy descriptors vs. reference-energy columns.
    scales = 10.0 ** rng.uniform(-spread, spread, n)
    A_S = rng.normal(size=(m_soft, n)) * scales
    y_S = A_S @ c_true + noise * rng.normal(size=m_soft)
    A_H = rng.normal(size=(m_hard, n)) * scales
    y_H = A_H @ (c_true + 0.05 * rng.normal(size=n))
    return A_S, y_S, A_H, y_H, c_true


def test_ridge_recovers_coefficients_with_bad_column_scaling():
    rng = np.random.default_rng(1)
    n = 15
    scales = 10.0 ** rng.uniform(-4, 4, n)
    A = rng.normal(size=(400, n)) * scales
    c = rng.normal(size=n) / scales
    y = A @ c
    got = ridge(A, y, reg=1e-12)
    np.testing.assert_allclose(got, c, rtol=1e-7)
    # Weights: rows with weight 0 are ignored, even when their targets are garbage.
    y_bad = y.copy()
    y_bad[:50] += 100.0
    w = np.ones(400)
    w[:50] = 0.0
    np.testing.assert_allclose(ridge(A, y_bad, reg=1e-12, weights=w), c, rtol=1e-7)


def test_ridge_with_noise_matches_normal_equations():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(300, 10))
    y = A @ rng.normal(size=10) + 0.1 * rng.normal(size=300)
    reg = 1e-2
    d = np.linalg.norm(A, axis=0)
    ref = np.linalg.solve(A.T @ A + reg * np.diag(d**2), A.T @ y)
    np.testing.assert_allclose(ridge(A, y, reg=reg), ref, rtol=1e-10)


def test_constrained_fit_reaches_alpha_with_smallest_lambda():
    A_S, y_S, A_H, y_H, _ = _problem()
    free = ridge(A_S, y_S)
    r_free = np.linalg.norm(A_H @ free - y_H)
    alpha = 1e-3 * r_free
    res = constrained_fit(A_S, y_S, A_H, y_H, alpha, rtol=1e-4)
    assert isinstance(res, FitResult)
    assert res.hard_residual_norm <= alpha
    assert res.lambda_ > 1.0  # the log search had to go up
    # lambda is (to rtol) the smallest that works: half of it fails.
    # A single solve at a fixed lambda (lambda_min = lambda_max) reports its residual in
    # the error when it fails.
    for lam in (res.lambda_ / 2, res.lambda_ / (1 + 2e-4)):
        with pytest.raises(ConfigurationError, match="best residual reached"):
            constrained_fit(A_S, y_S, A_H, y_H, alpha, lambda_min=lam, lambda_max=lam)
    # The history is a log search then a bisection; residuals fall with lambda.
    lams, resids = np.array(res.lambda_history).T
    order = np.argsort(lams)
    assert np.all(np.diff(resids[order]) <= 1e-12 * resids.max())
    assert res.n_iterations == len(res.lambda_history)
    # Cost of the constraint on the soft data is positive but modest.
    soft_free = np.sqrt(np.mean((y_S - A_S @ free) ** 2))
    assert res.soft_rmse > soft_free
    np.testing.assert_allclose(res.multipliers, 2 * res.lambda_ * res.hard_residuals)
    assert res.binding.any() and res.rank == 20 and res.hard_rank == 12


def test_constrained_fit_returns_lambda_min_when_already_satisfied():
    A_S, y_S, A_H, y_H, _ = _problem()
    res = constrained_fit(A_S, y_S, A_H, y_H, alpha=1e6)
    assert res.lambda_ == 1.0 and res.n_iterations == 1


def test_penalty_converges_to_equality_solution():
    A_S, y_S, A_H, y_H, _ = _problem(seed=3)
    exact = equality_constrained_fit(A_S, y_S, A_H, y_H, reg=0.0)
    tight = constrained_fit(A_S, y_S, A_H, y_H, alpha=1e-7, reg=0.0)
    assert tight.hard_residual_norm <= 1e-7
    np.testing.assert_allclose(tight.coefficients, exact.coefficients, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(tight.multipliers, exact.multipliers, rtol=1e-2,
                               atol=1e-6 * np.abs(exact.multipliers).max())
    # alpha = 0 is the exact limit.
    zero = constrained_fit(A_S, y_S, A_H, y_H, alpha=0.0, reg=0.0)
    assert zero.lambda_ == np.inf
    np.testing.assert_allclose(zero.coefficients, exact.coefficients)


def test_equality_fit_satisfies_constraints_and_matches_kkt_and_slsqp():
    A_S, y_S, A_H, y_H, _ = _problem(seed=4, n=12, m_hard=5, spread=0.5)
    res = equality_constrained_fit(A_S, y_S, A_H, y_H, reg=0.0)
    assert np.max(np.abs(A_H @ res.coefficients - y_H)) <= 1e-10 * np.abs(y_H).max()
    # KKT block system reference: [2 A^T A, B^T; B, 0] [c; mu] = [2 A^T y; y_H].
    n, m = A_S.shape[1], A_H.shape[0]
    K = np.block([[2 * A_S.T @ A_S, A_H.T], [A_H, np.zeros((m, m))]])
    sol = np.linalg.solve(K, np.concatenate([2 * A_S.T @ y_S, y_H]))
    np.testing.assert_allclose(res.coefficients, sol[:n], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.multipliers, sol[n:], rtol=1e-6)
    # An independent optimiser on a well-scaled copy (SLSQP is not scale-robust).
    d = np.linalg.norm(A_S, axis=0)
    As, Hs = A_S / d, A_H / d
    opt = scipy.optimize.minimize(
        lambda z: np.sum((y_S - As @ z) ** 2), np.zeros(n),
        jac=lambda z: -2 * As.T @ (y_S - As @ z),
        constraints=[{"type": "eq", "fun": lambda z: Hs @ z - y_H, "jac": lambda z: Hs}],
        method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
    )
    assert opt.success
    assert res.soft_residual_norm**2 <= opt.fun * (1 + 1e-8)
    np.testing.assert_allclose(res.coefficients * d, opt.x, rtol=1e-4, atol=1e-6)


def test_equality_fit_handles_rank_deficient_inconsistent_constraints():
    A_S, y_S, A_H, y_H, _ = _problem(seed=5, n=10, m_hard=4)
    # Duplicate a hard row with a different target: the two cannot both hold.
    A_H2 = np.vstack([A_H, A_H[0]])
    y_H2 = np.concatenate([y_H, [y_H[0] + 2.0]])
    res = equality_constrained_fit(A_S, y_S, A_H2, y_H2, reg=0.0)
    assert res.hard_rank == 4
    assert any("independent" in note for note in res.notes)
    r = res.hard_residuals
    # The consistent rows hold exactly; the conflicting pair splits the difference.
    np.testing.assert_allclose(r[1:4], 0.0, atol=1e-9)
    np.testing.assert_allclose([r[0], r[4]], [1.0, -1.0], rtol=1e-8)
    # The penalty method cannot beat that floor: it says so.
    with pytest.raises(ConfigurationError, match=r"best residual reached was 1\.41.*cannot be fitted better"):
        constrained_fit(A_S, y_S, A_H2, y_H2, alpha=0.1, lambda_max=1e6)


def test_constrained_fit_unreachable_alpha_names_best_residual():
    A_S, y_S, A_H, y_H, _ = _problem(seed=6)
    with pytest.raises(ConfigurationError, match=r"best residual reached was .* larger alpha, a richer model"):
        constrained_fit(A_S, y_S, A_H, y_H, alpha=1e-9, lambda_max=100.0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(A_soft=np.zeros((0, 20))), r"A_soft is empty"),
        (lambda a: a.update(y_soft=a["y_soft"][:-1]), r"y_soft has shape \(299,\) but A_soft has 300 rows"),
        (lambda a: a.update(A_hard=a["A_hard"][:, :-1]), r"A_soft has 20 columns but A_hard has 19"),
        (lambda a: a["A_soft"].__setitem__((3, 4), np.nan),
         r"A_soft contains 1 NaN or infinite entries \(first at index \[3, 4\]\)"),
        (lambda a: a["y_hard"].__setitem__(0, np.inf), r"y_hard contains 1 NaN"),
        (lambda a: a.update(alpha=-1.0), r"alpha must be a finite tolerance >= 0"),
        (lambda a: a.update(reg=-1.0), r"reg must be a finite number >= 0"),
        (lambda a: a.update(weights_soft=-np.ones(300)), r"weights_soft has negative entries"),
    ],
)
def test_constrained_fit_input_errors(mutate, match):
    A_S, y_S, A_H, y_H, _ = _problem()
    args = {"A_soft": A_S.copy(), "y_soft": y_S.copy(), "A_hard": A_H.copy(),
            "y_hard": y_H.copy(), "alpha": 1.0}
    mutate(args)
    with pytest.raises(ConfigurationError, match=match):
        constrained_fit(**args)


def test_zero_columns_are_named_or_fixed_at_zero():
    A_S, y_S, A_H, y_H, _ = _problem(n=8)
    A_S[:, [2, 5]] = 0.0
    A_H[:, 5] = 0.0
    # Column 2 is determined by the hard rows: fine. Column 5 by nothing: an error.
    with pytest.raises(ConfigurationError, match=r"columns \[5\] of A_soft and A_hard are all zero"):
        equality_constrained_fit(A_S, y_S, A_H, y_H)
    res = equality_constrained_fit(A_S, y_S, A_H, y_H, zero_columns="zero")
    assert res.coefficients[5] == 0.0
    with pytest.raises(ConfigurationError, match=r"columns \[2, 5\] of A are all zero.*zero_columns='zero'"):
        ridge(A_S, y_S)
    assert ridge(A_S, y_S, zero_columns="zero")[[2, 5]].tolist() == [0.0, 0.0]


def test_ridge_input_errors():
    with pytest.raises(ConfigurationError, match="2-D design matrix"):
        ridge(np.ones(3), np.ones(3))
    with pytest.raises(ConfigurationError, match=r"weights has shape \(2,\)"):
        ridge(np.ones((3, 2)), np.ones(3), weights=np.ones(2))


# ------------------------------------------- zero_columns through fit_models and [fit]


def _w_config(**fit):
    return {
        "expensive": {"backend": "lammps", "style": "eam_alloy", "file": "W_zhou.eam.alloy",
                      "species": ["W"]},
        "structure": {"element": "W", "crystal": "bcc", "a": 3.165},
        "model": {"family": "uf3", "r2": 4.5, "n2": 9, "r2_min": 1.0, "r3": 3.5, "n3": 2,
                  "r3_min": 2.0},
        "fit": fit,
        "output": {"directory": "out"},
    }


def test_zero_columns_config_key_is_checked_and_defaults_to_error(tmp_path):
    assert pipeline.parse_config(_w_config(), tmp_path).zero_columns == "error"
    assert pipeline.parse_config(_w_config(zero_columns="zero"), tmp_path).zero_columns == "zero"
    with pytest.raises(ConfigurationError,
                       match=r"fit\.zero_columns: must be one of \['error', 'zero'\], got 'skip'"):
        pipeline.parse_config(_w_config(zero_columns="skip"), tmp_path)


def test_zero_columns_named_in_the_message_reach_both_fits(tmp_path):
    """A UF3 whose knots start at 1 Å on W data (no pair below 2.5 Å): the short-range
    coefficients have no data. The error says where to switch them to 0, and the
    switch fixes them at exactly 0 in both the ridge and the constrained fit."""
    cfg = pipeline.parse_config(_w_config(zero_columns="zero"), tmp_path)
    eam = LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"])
    try:
        cell = bulk("W", "bcc", a=3.165, cubic=True).repeat(2)
        reference = data.label_frame(cell, eam)
        hard = data.strained_set(cell, eam, values=[-0.004, 0.004])
        soft = []
        for seed in range(3):
            frame = cell.copy()
            frame.rattle(0.05, seed=seed)
            soft.append(data.label_frame(frame, eam))
    finally:
        eam.close()
    model = pipeline.make_model(cfg.model, ["W"])
    assert isinstance(model, Uf3Model)
    with pytest.raises(ConfigurationError, match=r"zero_columns='zero' .*\[fit\] zero_columns = \"zero\""):
        pipeline.fit_models(model, reference, hard, soft, alpha=1e-4)
    unconstrained, constrained, _ = pipeline.fit_models(model, reference, hard, soft, alpha=1e-4,
                                                        zero_columns=cfg.zero_columns)
    dm = model.design_matrix([reference, *hard, *soft])
    undetermined = ~np.any(np.vstack([dm.energy, dm.forces]) != 0, axis=0)
    assert undetermined.any()
    assert np.all(unconstrained[undetermined] == 0.0)
    assert np.all(constrained.coefficients[undetermined] == 0.0)
    assert np.any(constrained.coefficients[~undetermined] != 0.0)
