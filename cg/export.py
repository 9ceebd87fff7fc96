"""Export a trained :class:`cg.potential.CGPotential` to OpenMM (openmm-torch).

openmm-torch's ``TorchForce`` loads a TorchScript module whose ``forward(positions)`` takes the particle
positions (N, 3) in **nm** and returns the potential energy in **kJ/mol**; OpenMM gets the forces by
autograd of that energy. :class:`OpenMMTorchEnergy` wraps a CG potential with exactly those conversions
(the workbench works in Å and kcal/mol: x_Å = 10 x_nm, E_kJ = 4.184 E_kcal), and :func:`export_torchscript`
writes it (traced for the potential's bead count). :func:`openmm_system` builds the matching
``openmm.System``: one particle per bead with the bead's mass (amu = Da), no constraints (the CG bonds are
springs of the potential), and the ``TorchForce`` when openmm-torch is installed.

The exported module is checked with ``torch.jit.load`` alone (tests/test_export.py): openmm-torch's wheels
need CUDA libraries to import, which a CPU-only machine may lack.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forcefield.errors import InputError
from forcefield.units import ANGSTROM_PER_NM, KJ_PER_KCAL

from .potential import CGPotential


class OpenMMTorchEnergy(nn.Module):
    """positions (N, 3) nm -> energy (scalar, float64) kJ/mol of a CG potential (openmm-torch's convention).

    The priors run in float64 and the network in its own dtype (float32), as in :meth:`CGPotential.forward`;
    positions of either precision are accepted (OpenMM's single/mixed/double platforms).
    """

    def __init__(self, potential: CGPotential) -> None:
        super().__init__()
        self.potential = copy.deepcopy(potential).cpu().eval()
        for p in self.potential.parameters():
            p.requires_grad_(False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64).reshape(1, -1, 3) * ANGSTROM_PER_NM
        return self.potential(x)[0] * KJ_PER_KCAL


def export_torchscript(potential: CGPotential, path: str | os.PathLike,
                       example: np.ndarray | None = None) -> Path:
    """Write ``potential`` as a TorchScript module for openmm-torch (nm in, kJ/mol out); atomic write.

    ``example`` : one bead configuration (n, 3) in Å used for tracing (default: beads spaced 3.8 Å along a
    zigzag). The trace is for this bead count only, which is what an OpenMM System of these beads needs.
    """
    from forcefield.fileio import atomic_path

    n = potential.n_beads
    if example is None:
        k = np.arange(n, dtype=float)
        example = np.stack([3.3 * k, 1.2 * (k % 2), 0.4 * np.sin(k)], 1)
    example = np.asarray(example, dtype=float)
    if example.shape != (n, 3) or not np.isfinite(example).all():
        raise InputError(f"example configuration must be finite ({n}, 3) Å, got {example.shape}")
    module = OpenMMTorchEnergy(potential)
    x = torch.as_tensor(example / ANGSTROM_PER_NM, dtype=torch.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (x,), check_trace=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return path


def openmm_topology(potential: CGPotential) -> Any:
    """``openmm.app.Topology`` of the beads: one chain, one residue ``CG``, bead names, the bead bonds."""
    import openmm.app as app

    top = app.Topology()
    res = top.addResidue("CG", top.addChain())
    atoms = [top.addAtom(str(name)[:4], None, res) for name in potential.names]
    for i, j in potential.bonds.cpu().numpy().reshape(-1, 2):
        top.addBond(atoms[int(i)], atoms[int(j)])
    return top


def openmm_system(potential: CGPotential, module_path: str | os.PathLike | None = None,
                  box_nm: np.ndarray | None = None) -> Any:
    """``openmm.System`` of the CG beads: masses (amu), no constraints; with ``module_path`` also the
    openmm-torch ``TorchForce`` of an exported module (needs the ``openmmtorch`` package).

    ``box_nm`` : optional (3,) box edge lengths in nm (the exported potential itself is not periodic).
    """
    import openmm

    system = openmm.System()
    for m in potential.masses.cpu().numpy():
        system.addParticle(float(m))
    if box_nm is not None:
        a, b, c = (float(v) for v in np.asarray(box_nm, dtype=float).reshape(3))
        system.setDefaultPeriodicBoxVectors(openmm.Vec3(a, 0, 0), openmm.Vec3(0, b, 0), openmm.Vec3(0, 0, c))
    if module_path is not None:
        if not Path(module_path).exists():
            raise InputError(f"{module_path}: no such TorchScript module (write it with export_torchscript)")
        try:
            from openmmtorch import TorchForce
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise InputError("openmm-torch is not installed (conda install -c conda-forge openmm-torch); "
                             f"the System has no CG force ({e})") from e
        system.addForce(TorchForce(str(module_path)))
    return system
