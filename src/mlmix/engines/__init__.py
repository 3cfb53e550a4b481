"""The engines that advance a structure on mixed forces.

* :mod:`mlmix.engines.ase`: ASE integrators and optimisers around
  :class:`~mlmix.mixing.MixedCalculator` (MD, relaxation, NEB; any backend);
  :mod:`mlmix.engines.langevin` is its region-weighted Langevin thermostat.
* :mod:`mlmix.engines.lammps`: LAMMPS integrates and computes the cheap pair style,
  mlmix adds the expensive correction, over MPI ranks (MD).
* :mod:`mlmix.engines.session`: what both share when run by ``mlmix run`` (set-up,
  run directory, start, outputs); neither engine imports the other.
"""
