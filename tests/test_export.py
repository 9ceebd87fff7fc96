"""Export to openmm-torch: the TorchScript module loaded with torch.jit.load gives the CG potential's energy
in kJ/mol for positions in nm, and its autograd forces equal the model's forces with units converted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cg.export import export_torchscript, openmm_system, openmm_topology
from cg.potential import build_potential
from cg.priors import Priors


def _potential(network: str):
    rng = np.random.default_rng(0)
    n, frames = 6, 300
    R = np.zeros((frames, n, 3))
    for k in range(1, n):
        step = rng.normal(size=(frames, 3))
        step[:, 0] += 1.5
        R[:, k] = R[:, k - 1] + rng.normal(3.8, 0.05, (frames, 1)) * step / np.linalg.norm(step, axis=1, keepdims=True)
    bonds = np.array([[k, k + 1] for k in range(n - 1)])
    torch.manual_seed(0)
    pot = build_potential(Priors.fit(R, bonds, 300.0), ["N", "CA", "C", "N", "CA", "C"],
                          np.array([14.0, 13.0, 28.0, 15.0, 13.0, 28.0]), bonds, network=network, reference=R,
                          hidden=16)
    with torch.no_grad():  # a network that matters: its forces are comparable to the priors'
        for p in pot.net.parameters():
            p.mul_(3.0)
    return pot, R


@pytest.mark.parametrize("network", ["features", "schnet"])
def test_exported_module_energy_and_forces_in_openmm_units(network, tmp_path):
    pot, R = _potential(network)
    path = export_torchscript(pot, tmp_path / "cg.pt", example=R[0])
    mod = torch.jit.load(str(path))
    for frame in (R[5], R[77], R[200] + 0.2):  # configurations other than the traced one
        E_ref, F_ref = pot.energy_forces(torch.as_tensor(frame[None]))
        for dtype in (torch.float64, torch.float32):  # OpenMM's double and single/mixed precision
            x = torch.as_tensor(frame / 10.0, dtype=dtype).requires_grad_(True)  # nm
            E = mod(x)
            (g,) = torch.autograd.grad(E, x)
            F = -g.double()  # kJ/mol/nm, as OpenMM takes it
            tol = 1e-9 if dtype == torch.float64 else 1e-4
            assert E.dim() == 0 and float(E.detach()) == pytest.approx(float(E_ref[0]) * 4.184, rel=tol, abs=tol)
            scale = F_ref.abs().max().item() * 41.84
            assert torch.allclose(F, F_ref[0] * 41.84, rtol=0, atol=max(tol, 1e-6) * 10 * scale)
    # translation invariance survives the export: the forces sum to zero
    x = torch.as_tensor(R[9] / 10.0).requires_grad_(True)
    (g,) = torch.autograd.grad(mod(x), x)
    assert g.sum(0).abs().max() < 1e-5 * g.abs().max()  # the network runs in float32


def test_openmm_system_of_the_beads(tmp_path):
    import openmm

    pot, R = _potential("features")
    system = openmm_system(pot, box_nm=[5.0, 5.0, 5.0])
    assert system.getNumParticles() == 6 and system.getNumConstraints() == 0 and system.getNumForces() == 0
    masses = [system.getParticleMass(i).value_in_unit(openmm.unit.dalton) for i in range(6)]
    assert np.allclose(masses, pot.masses.numpy())
    top = openmm_topology(pot)
    assert top.getNumAtoms() == 6 and top.getNumBonds() == 5
    assert [a.name for a in top.atoms()] == ["N", "CA", "C", "N", "CA", "C"]
    from forcefield.errors import InputError

    with pytest.raises(InputError, match="no such TorchScript"):
        openmm_system(pot, tmp_path / "missing.pt")


def test_cli_export_openmm(tmp_path):
    from cgwb.cli import main

    pot, R = _potential("features")
    pot.save(str(tmp_path / "pot.pt"))
    assert main(["export", "openmm", str(tmp_path / "pot.pt"), "-o", str(tmp_path / "m.pt"),
                 "--system", str(tmp_path / "sys.xml")]) == 0
    mod = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.as_tensor(R[3] / 10.0)
    assert float(mod(x)) == pytest.approx(float(pot(torch.as_tensor(R[3:4]))[0]) * 4.184, rel=1e-9)
    assert "<System" in (tmp_path / "sys.xml").read_text()
