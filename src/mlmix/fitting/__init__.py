"""Distil a cheap linear potential from an expensive one, with hard constraints.

method.md §5. Data flow::

    expensive Potential --data--> labelled frames (hard: strained bulk, soft: MD)
    LinearModel.design_matrix(frames) --> rows A, targets y
    solvers.constrained_fit(A_S, y_S, A_H, y_H, alpha) --> coefficients
    LinearModel.potential(coefficients) --> a cheap mlmix Potential (LAMMPS files)
    elastic / report --> lattice parameter, elastic constants, RMSEs
"""
