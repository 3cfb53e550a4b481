"""Linear least-squares solvers for distilling a cheap linear potential (method.md §5).

Pure numpy/scipy; unit-agnostic (the caller scales energy and force rows, e.g. eV and
eV/Å, to comparable weights before calling).

Three solvers:

* :func:`ridge`: weighted, column-scaled ridge regression.
* :func:`constrained_fit`: the penalty formulation of the paper,

      min_c ||y_S - A_S c||^2 + lambda ||y_H - A_H c||^2 + reg ||D c||^2,

  with the smallest lambda such that ``||A_H c - y_H|| <= alpha``: a log search
  lambda = 1, 10, 100, ... up to ``lambda_max``, then bisection (in log lambda)
  between the last failing and the first passing value.
* :func:`equality_constrained_fit`: the exact alpha -> 0 limit (null-space method),
  which also copes with a rank-deficient hard block by satisfying, in the
  least-squares sense, the part of the constraints that cannot hold exactly.

Regularisation is *relative*: ``D = diag(column norms)``, so the penalty on c_j is
``reg * ||A[:, j]||^2 * c_j^2``. That is ridge on unit-norm columns: scale-invariant
(the same ``reg`` works whether a column is a descriptor of size 1e-3 or 1e3) and the
same scaling conditions the least-squares problems.

Every input problem (empty matrices, mismatched shapes, NaN/inf, negative alpha,
coefficients no data determines) raises :class:`~mlmix.errors.ConfigurationError`
before any solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ..errors import ConfigurationError

__all__ = ["FitResult", "constrained_fit", "equality_constrained_fit", "ridge"]


@dataclass(frozen=True)
class FitResult:
    """Outcome of a (constrained) linear fit.

    Attributes:
        coefficients: ``(n,)`` the fitted coefficients c.
        lambda_: the penalty weight used; ``inf`` for the exact equality solve.
        hard_residual_norm: ``||A_H c - y_H||`` (units of y_H).
        hard_residuals: ``(m_H,)`` per-row ``A_H c - y_H``.
        soft_rmse: root mean square of ``y_S - A_S c`` (unweighted, units of y_S).
        soft_residual_norm: ``||y_S - A_S c||`` (unweighted).
        multipliers: ``(m_H,)`` constraint forces mu with
            ``grad(soft objective) + A_H^T mu = 0``; for the penalty fit
            ``mu = 2 lambda (A_H c - y_H)``, for the equality fit the KKT multipliers.
        binding: ``(m_H,)`` bool, rows whose multiplier is at least ``1e-3`` of the
            largest: the constraints that actually pull the solution away from the
            soft-only optimum.
        soft_rank, hard_rank, rank: numerical ranks of A_S, A_H and the stacked
            ``[A_S; A_H]`` (column-scaled).
        n_coefficients: n.
        n_iterations: number of linear solves (one per lambda tried).
        lambda_history: ``[(lambda, hard residual norm), ...]`` in the order tried.
        notes: human-readable remarks (rank deficiency, unreachable constraints).
    """

    coefficients: np.ndarray
    lambda_: float
    hard_residual_norm: float
    hard_residuals: np.ndarray
    soft_rmse: float
    soft_residual_norm: float
    multipliers: np.ndarray
    binding: np.ndarray
    soft_rank: int
    hard_rank: int
    rank: int
    n_coefficients: int
    n_iterations: int
    lambda_history: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------
# input checks (all before any solve)
# ----------------------------------------------------------------------------------


def _as_matrix(A, name: str) -> np.ndarray:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2:
        raise ConfigurationError(f"{name} must be a 2-D design matrix, got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ConfigurationError(
            f"{name} is empty (shape {A.shape}); give at least one row and one coefficient column"
        )
    _check_finite(A, name)
    return A


def _as_vector(y, rows: int, name: str, matrix: str) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 1 or y.shape[0] != rows:
        raise ConfigurationError(
            f"{name} has shape {y.shape} but {matrix} has {rows} rows; give one target per row"
        )
    _check_finite(y, name)
    return y


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        raise ConfigurationError(
            f"{name} contains {int(bad.sum())} NaN or infinite entries (first at index "
            f"{idx}); check the labels and descriptors of the frames that produced them"
        )


def _check_weights(weights, rows: int, name: str) -> np.ndarray:
    if weights is None:
        return np.ones(rows)
    w = np.asarray(weights, dtype=float)
    if w.shape != (rows,):
        raise ConfigurationError(f"{name} has shape {w.shape}; give one weight per row ({rows},)")
    _check_finite(w, name)
    if (w < 0).any():
        raise ConfigurationError(f"{name} has negative entries; weights must be >= 0")
    return w


def _check_reg(reg: float) -> float:
    reg = float(reg)
    if not math.isfinite(reg) or reg < 0:
        raise ConfigurationError(f"reg must be a finite number >= 0, got {reg}")
    return reg


def _zero_columns(*mats: np.ndarray) -> np.ndarray:
    """Indices of columns that are zero in every matrix given."""
    zero = np.ones(mats[0].shape[1], dtype=bool)
    for M in mats:
        zero &= ~np.any(M != 0.0, axis=0)
    return np.flatnonzero(zero)


def _handle_zero_columns(cols: np.ndarray, what: str, zero_columns: str) -> None:
    if zero_columns not in ("error", "zero"):
        raise ConfigurationError(f"zero_columns must be 'error' or 'zero', got {zero_columns!r}")
    if cols.size and zero_columns == "error":
        shown = cols[:20].tolist()
        more = f" (and {cols.size - 20} more)" if cols.size > 20 else ""
        raise ConfigurationError(
            f"columns {shown}{more} of {what} are all zero: no data determines these "
            "coefficients (e.g. a species absent from every frame); add frames that "
            "involve them, drop them from the model, or fix them at 0 with "
            "zero_columns='zero' (pipeline.fit_models argument; in a fit config: "
            "[fit] zero_columns = \"zero\")"
        )


def _column_scale(*mats: np.ndarray) -> np.ndarray:
    """Column norms of the first matrix with a non-zero column, 1 where all are zero."""
    scale = np.zeros(mats[0].shape[1])
    for M in mats:
        norms = np.linalg.norm(M, axis=0)
        scale = np.where(scale > 0, scale, norms)
    return np.where(scale > 0, scale, 1.0)


def _rank(M: np.ndarray, rcond: float) -> int:
    if M.size == 0:
        return 0
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rcond * s[0])) if s.size and s[0] > 0 else 0


# ----------------------------------------------------------------------------------
# ridge
# ----------------------------------------------------------------------------------


def ridge(A, y, reg: float = 1e-8, weights=None, *, zero_columns: str = "error") -> np.ndarray:
    """Weighted ridge regression ``min sum_i w_i (y_i - A_i c)^2 + reg ||D c||^2``.

    Args:
        A: ``(m, n)`` design matrix.
        y: ``(m,)`` targets.
        reg: relative ridge parameter (>= 0): the penalty on c_j is
            ``reg * ||A[:, j]||^2 c_j^2`` (see module docstring).
        weights: ``(m,)`` row weights w_i >= 0 (multiply the squared residuals);
            None = 1.
        zero_columns: ``"error"`` (default) raises when a column of A is all zero,
            ``"zero"`` sets those coefficients to 0.

    Returns:
        ``(n,)`` coefficients (for ``reg = 0`` and a rank-deficient A, the minimum-norm
        solution in the column-scaled variables).
    """
    A = _as_matrix(A, "A")
    y = _as_vector(y, A.shape[0], "y", "A")
    w = _check_weights(weights, A.shape[0], "weights")
    reg = _check_reg(reg)
    _handle_zero_columns(_zero_columns(A), "A", zero_columns)
    sw = np.sqrt(w)
    d = _column_scale(A)
    As = (A * sw[:, None]) / d
    ys = y * sw
    n = A.shape[1]
    if reg > 0:
        # Stacking sqrt(reg) I under the scaled matrix is ridge without forming A^T A,
        # whose condition number would be the square of A's.
        As = np.vstack([As, math.sqrt(reg) * np.eye(n)])
        ys = np.concatenate([ys, np.zeros(n)])
    coef, *_ = scipy.linalg.lstsq(As, ys, lapack_driver="gelsd")
    coef = coef / d
    coef[_zero_columns(A)] = 0.0  # exactly, not round-off (they are undetermined)
    return coef


# ----------------------------------------------------------------------------------
# penalty fit with the smallest sufficient lambda
# ----------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Checked, column-scaled problem with the soft block compressed by QR."""

    A_S: np.ndarray  # original (for residuals)
    y_S: np.ndarray
    A_H: np.ndarray
    y_H: np.ndarray
    w_S: np.ndarray
    d: np.ndarray  # column scale
    R_S: np.ndarray  # (k, n) R of sqrt(w) A_S / d
    q_S: np.ndarray  # (k,) Q^T sqrt(w) y_S
    H: np.ndarray  # A_H / d
    reg: float
    soft_rank: int
    hard_rank: int
    rank: int
    notes: list[str]


def _prepare(A_soft, y_soft, A_hard, y_hard, reg, weights_soft, zero_columns, rcond) -> _Prepared:
    A_S = _as_matrix(A_soft, "A_soft")
    y_S = _as_vector(y_soft, A_S.shape[0], "y_soft", "A_soft")
    A_H = _as_matrix(A_hard, "A_hard")
    y_H = _as_vector(y_hard, A_H.shape[0], "y_hard", "A_hard")
    if A_S.shape[1] != A_H.shape[1]:
        raise ConfigurationError(
            f"A_soft has {A_S.shape[1]} columns but A_hard has {A_H.shape[1]}; both must "
            "come from the same model (one column per coefficient)"
        )
    w = _check_weights(weights_soft, A_S.shape[0], "weights_soft")
    reg = _check_reg(reg)
    _handle_zero_columns(_zero_columns(A_S, A_H), "A_soft and A_hard", zero_columns)
    d = _column_scale(A_S, A_H)
    S = (A_S * np.sqrt(w)[:, None]) / d
    H = A_H / d
    # One QR of the (possibly very tall) soft block; every lambda then solves a small
    # (k + m_H + n) x n system.
    Q, R = np.linalg.qr(S, mode="reduced")
    q = Q.T @ (y_S * np.sqrt(w))
    soft_rank = _rank(R, rcond)
    hard_rank = _rank(H, rcond)
    rank = _rank(np.vstack([R, H]), rcond)
    n = A_S.shape[1]
    notes = []
    if hard_rank < A_H.shape[0]:
        notes.append(
            f"A_hard has rank {hard_rank} < {A_H.shape[0]} rows: some hard rows are "
            "(numerically) linear combinations of others"
        )
    if rank < n and reg == 0:
        notes.append(
            f"[A_soft; A_hard] has rank {rank} < {n} coefficients and reg = 0: the "
            "minimum-norm solution is returned"
        )
    return _Prepared(A_S, y_S, A_H, y_H, w, d, R, q, H, reg, soft_rank, hard_rank, rank, notes)


def _penalty_solve(p: _Prepared, lam: float) -> np.ndarray:
    n = p.d.size
    blocks = [p.R_S, math.sqrt(lam) * p.H]
    rhs = [p.q_S, math.sqrt(lam) * p.y_H]
    if p.reg > 0:
        blocks.append(math.sqrt(p.reg) * np.eye(n))
        rhs.append(np.zeros(n))
    z, *_ = scipy.linalg.lstsq(np.vstack(blocks), np.concatenate(rhs), lapack_driver="gelsd")
    return z / p.d


def _result(p: _Prepared, c: np.ndarray, lam: float, mu: np.ndarray, n_iter: int,
            history, notes) -> FitResult:
    c = c.copy()
    c[_zero_columns(p.A_S, p.A_H)] = 0.0  # undetermined: exactly 0, not round-off
    r_H = p.A_H @ c - p.y_H
    r_S = p.y_S - p.A_S @ c
    amax = float(np.max(np.abs(mu))) if mu.size else 0.0
    binding = np.abs(mu) >= 1e-3 * amax if amax > 0 else np.zeros(mu.shape, bool)
    return FitResult(
        coefficients=c,
        lambda_=float(lam),
        hard_residual_norm=float(np.linalg.norm(r_H)),
        hard_residuals=r_H,
        soft_rmse=float(np.sqrt(np.mean(r_S**2))),
        soft_residual_norm=float(np.linalg.norm(r_S)),
        multipliers=mu,
        binding=binding,
        soft_rank=p.soft_rank,
        hard_rank=p.hard_rank,
        rank=p.rank,
        n_coefficients=c.size,
        n_iterations=n_iter,
        lambda_history=list(history),
        notes=list(notes),
    )


def constrained_fit(
    A_soft,
    y_soft,
    A_hard,
    y_hard,
    alpha: float,
    *,
    reg: float = 1e-8,
    weights_soft=None,
    lambda_min: float = 1.0,
    lambda_factor: float = 10.0,
    lambda_max: float = 1e14,
    rtol: float = 1e-3,
    zero_columns: str = "error",
    rcond: float = 1e-12,
) -> FitResult:
    """Soft fit with hard rows enforced to ``||A_H c - y_H|| <= alpha`` (method.md §5).

    Minimises ``||y_S - A_S c||_w^2 + lambda ||y_H - A_H c||^2 + reg ||D c||^2`` and
    chooses the smallest lambda that meets the tolerance: lambda = lambda_min,
    lambda_min * lambda_factor, ... up to lambda_max; once one passes, bisection in
    log(lambda) between the last failing and the first passing value until their ratio
    is below ``1 + rtol``. The hard residual is non-increasing in lambda, so the result
    is the smallest sufficient lambda to relative precision ``rtol`` (or lambda_min
    itself when that already passes).

    Args:
        A_soft, y_soft: ``(m_S, n)``, ``(m_S,)`` soft rows (MD energies and forces).
        A_hard, y_hard: ``(m_H, n)``, ``(m_H,)`` hard rows (strained-bulk energies).
        alpha: tolerance on ``||A_H c - y_H||`` (units of y_H, e.g. eV), >= 0;
            ``alpha == 0`` is the exact limit and is delegated to
            :func:`equality_constrained_fit`.
        reg: relative ridge parameter (module docstring).
        weights_soft: ``(m_S,)`` row weights of the soft rows; None = 1.
        lambda_min, lambda_factor, lambda_max: the log search.
        rtol: relative precision of the bisection on lambda.
        zero_columns: ``"error"`` or ``"zero"`` for columns zero in both blocks.
        rcond: relative singular-value threshold for the reported ranks.

    Raises:
        ConfigurationError: bad input (before any solve); or no lambda up to
            lambda_max reaches alpha (the message gives the best residual reached).
    """
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigurationError(
            f"alpha must be a finite tolerance >= 0 on ||A_H c - y_H||, got {alpha}"
        )
    if not (lambda_min > 0 and lambda_factor > 1 and lambda_max >= lambda_min and 0 < rtol < 1):
        raise ConfigurationError(
            f"need 0 < lambda_min <= lambda_max, lambda_factor > 1 and 0 < rtol < 1; got "
            f"lambda_min={lambda_min}, lambda_max={lambda_max}, "
            f"lambda_factor={lambda_factor}, rtol={rtol}"
        )
    if alpha == 0:
        return equality_constrained_fit(
            A_soft, y_soft, A_hard, y_hard, reg=reg, weights_soft=weights_soft,
            zero_columns=zero_columns, rcond=rcond,
        )
    p = _prepare(A_soft, y_soft, A_hard, y_hard, reg, weights_soft, zero_columns, rcond)
    history: list[tuple[float, float]] = []

    def trial(lam: float) -> tuple[np.ndarray, float]:
        c = _penalty_solve(p, lam)
        res = float(np.linalg.norm(p.A_H @ c - p.y_H))
        history.append((lam, res))
        return c, res

    lam_lo = None  # largest lambda known to fail
    lam = float(lambda_min)
    best: tuple[float, float | None] = (math.inf, None)
    while True:
        c, res = trial(lam)
        if res <= alpha:
            break
        best = min(best, (res, lam), key=lambda t: t[0])
        lam_lo = lam
        if lam >= lambda_max:
            floor = _hard_floor(p)
            why = (
                f"the hard rows alone cannot be fitted better than {floor:.6g} (they are "
                "inconsistent for this model)"
                if floor > alpha
                else f"they could reach {floor:.6g} with lambda above lambda_max={lambda_max:g}"
            )
            raise ConfigurationError(
                f"no lambda up to {lambda_max:g} brings ||A_H c - y_H|| under alpha="
                f"{alpha:g}: the best residual reached was {best[0]:.6g} (at lambda="
                f"{best[1]:g}); {why}. Use a larger alpha, a richer model (more "
                "coefficients), or equality_constrained_fit for the exact limit"
            )
        lam = min(lam * lambda_factor, float(lambda_max))
    lam_hi, c_hi = lam, c
    if lam_lo is not None:
        # Bisection in log(lambda): the residual spans decades of lambda.
        while lam_hi / lam_lo > 1 + rtol:
            mid = math.sqrt(lam_lo * lam_hi)
            c_mid, res_mid = trial(mid)
            if res_mid <= alpha:
                lam_hi, c_hi = mid, c_mid
            else:
                lam_lo = mid
    mu = 2 * lam_hi * (p.A_H @ c_hi - p.y_H)
    return _result(p, c_hi, lam_hi, mu, len(history), history, p.notes)


def _hard_floor(p: _Prepared) -> float:
    """Smallest ``||A_H c - y_H||`` any c achieves (the part of y_H outside range(A_H))."""
    z, *_ = scipy.linalg.lstsq(p.H, p.y_H, lapack_driver="gelsd")
    return float(np.linalg.norm(p.H @ z - p.y_H))


# ----------------------------------------------------------------------------------
# exact equality constraints (alpha -> 0)
# ----------------------------------------------------------------------------------


def equality_constrained_fit(
    A_soft,
    y_soft,
    A_hard,
    y_hard,
    *,
    reg: float = 1e-8,
    weights_soft=None,
    zero_columns: str = "error",
    rcond: float = 1e-12,
) -> FitResult:
    """Minimise the soft objective subject to ``A_H c = y_H`` exactly (null-space method).

    With the SVD of the column-scaled hard block ``H = U S V^T`` truncated at
    ``rcond * s_max`` (rank r): ``c_p = V_r S_r^-1 U_r^T y_H`` is the minimum-norm
    least-squares solution of the hard rows, ``N = V_{r:}`` spans their null space, and
    ``c = c_p + N z`` with z minimising the soft objective (plus ridge). When the hard
    rows are rank deficient and inconsistent (``y_H`` outside range(A_H)), the
    satisfiable part holds exactly and the rest in the least-squares sense; a note
    reports the unreachable residual.

    Args, as :func:`constrained_fit` (no alpha, no lambda).

    Returns:
        FitResult with ``lambda_ = inf`` and the KKT multipliers.
    """
    p = _prepare(A_soft, y_soft, A_hard, y_hard, reg, weights_soft, zero_columns, rcond)
    U, s, Vt = np.linalg.svd(p.H, full_matrices=True)
    r = int(np.sum(s > rcond * s[0])) if s.size and s[0] > 0 else 0
    V_r, N = Vt[:r].T, Vt[r:].T
    zp = V_r @ ((U[:, :r].T @ p.y_H) / s[:r])
    if N.shape[1]:
        blocks = [p.R_S @ N]
        rhs = [p.q_S - p.R_S @ zp]
        if p.reg > 0:
            blocks.append(math.sqrt(p.reg) * N)
            rhs.append(-math.sqrt(p.reg) * zp)
        zz, *_ = scipy.linalg.lstsq(np.vstack(blocks), np.concatenate(rhs), lapack_driver="gelsd")
        z = zp + N @ zz
    else:  # the hard rows fix every coefficient
        z = zp
    c = z / p.d
    notes = list(p.notes)
    floor = float(np.linalg.norm(p.H @ z - p.y_H))
    if r < p.H.shape[0]:
        notes.append(
            f"only {r} of {p.H.shape[0]} hard constraints are independent; the "
            f"unsatisfiable part of y_hard has norm {floor:.3g} (least-squares)"
        )
    if N.shape[1] == 0:
        notes.append("the hard rows determine every coefficient; the soft data has no influence")
    # KKT multipliers in the scaled variables: grad_z f + H^T mu = 0 with
    # f = ||q - R z||^2 + reg ||z||^2 (the column scaling leaves mu unchanged).
    grad = 2 * (p.R_S.T @ (p.R_S @ z - p.q_S)) + 2 * p.reg * z
    mu, *_ = scipy.linalg.lstsq(p.H.T, -grad, lapack_driver="gelsd")
    return _result(p, c, math.inf, mu, 1, [(math.inf, floor)], notes)
