"""Differentiable simulation (DiffSim) and Iterative Boltzmann Inversion for pair potentials from RDFs.

**Units: this subpackage works in reduced Lennard-Jones units** (epsilon = sigma = m = k_B = 1:
energies in epsilon, lengths in sigma, temperatures k_B T / epsilon, densities rho sigma^3, times
sigma sqrt(m / epsilon)), unlike the rest of the workbench (Å, kcal/mol, fs, K, amu). Convert at the
edges with :class:`cg.diffsim.units.ReducedUnits`.

Modules: :mod:`.md` (differentiable periodic MD, neighbour lists, BAOAB Langevin / NVE / Nosé–Hoover
chain, particle types, table sets), :mod:`.observables` (smoothed RDF, partial RDFs, VACF),
:mod:`.ensemble` (states with compositions, batched simulation over states, target files),
:mod:`.potentials` (LJ, neural pair potential with an LJ-family prior, temperature-dependent
u(r; T) = e(r) - T s(r), one potential per type pair, tables), :mod:`.fit` (RDF-loss fitting with
truncated backpropagation), :mod:`.ibi` (Iterative Boltzmann Inversion with the same engine), :mod:`.plots`.
"""
from __future__ import annotations

from .ensemble import Ensemble, State, load_targets, sample_all, sample_rdf, save_targets
from .fit import DiffSimFitter, lj_guess_from_rdf
from .ibi import IBIResult, ibi
from .md import NeighbourList, PairTable, Simulation
from .observables import RDF, type_pairs, vacf
from .potentials import (EntropicPairPotential, LennardJones, NeuralPairPotential, TabulatedPotential,
                         TypedPairPotential, load_model, read_table, save_model, write_table)
from .units import ReducedUnits

__all__ = ["Ensemble", "State", "load_targets", "sample_all", "sample_rdf", "save_targets", "type_pairs",
           "EntropicPairPotential", "TypedPairPotential", "DiffSimFitter", "lj_guess_from_rdf",
           "IBIResult", "ibi", "NeighbourList", "PairTable", "Simulation", "RDF", "vacf", "LennardJones", "NeuralPairPotential",
           "TabulatedPotential", "load_model", "save_model", "read_table", "write_table", "ReducedUnits"]
