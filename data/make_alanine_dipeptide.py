"""Build ``alanine-dipeptide.pdb`` (ACE-ALA-NME, 22 atoms) from internal coordinates.

How the shipped file was made (run from the repository root)::

    python data/make_alanine_dipeptide.py data/alanine-dipeptide.pdb

1. The ten heavy atoms are placed from textbook bond lengths, bond angles and
   dihedrals (trans peptide bonds, phi=-80 deg, psi=150 deg: the C7eq/beta basin)
   with the natural-extension reference frame (NeRF) construction.
2. OpenMM's ``Modeller.addHydrogens`` adds the twelve hydrogens with the names
   of the amber14 residue templates.
3. The structure is energy-minimised with amber14 (ff14SB) in vacuum, and
   written with ``PDBFile.writeFile`` (CONECT records included).
"""
from __future__ import annotations

import sys

import numpy as np


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position of atom d given a-b-c, |cd|=bond, angle bcd, torsion abcd (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def heavy_atoms(phi: float = -80.0, psi: float = 150.0) -> list[tuple[str, str, int, np.ndarray]]:
    """(residue, atom name, residue number, position) of the heavy atoms."""
    ch3 = np.array([0.0, 0.0, 0.0])
    c0 = np.array([1.52, 0.0, 0.0])
    o0 = _place(np.array([0.0, 1.0, 0.0]), ch3, c0, 1.23, 121.0, 0.0)
    n1 = _place(o0, ch3, c0, 1.33, 116.0, 180.0)
    ca = _place(ch3, c0, n1, 1.46, 122.0, 180.0)  # omega (ACE)
    c1 = _place(c0, n1, ca, 1.52, 111.0, phi)
    cb = _place(c0, n1, ca, 1.53, 110.0, phi - 122.0)  # L-alanine
    n2 = _place(n1, ca, c1, 1.33, 116.0, psi)
    o1 = _place(n1, ca, c1, 1.23, 121.0, psi + 180.0)
    c2 = _place(ca, c1, n2, 1.46, 122.0, 180.0)  # omega (NME)
    return [
        ("ACE", "CH3", 1, ch3), ("ACE", "C", 1, c0), ("ACE", "O", 1, o0),
        ("ALA", "N", 2, n1), ("ALA", "CA", 2, ca), ("ALA", "CB", 2, cb), ("ALA", "C", 2, c1), ("ALA", "O", 2, o1),
        ("NME", "N", 3, n2), ("NME", "C", 3, c2),
    ]


def main(out: str) -> None:
    import openmm
    import openmm.app as app
    import openmm.unit as u
    from io import StringIO

    lines = []
    for i, (res, name, resid, x) in enumerate(heavy_atoms(), start=1):
        lines.append(
            f"ATOM  {i:5d} {name:<4s} {res:3s} A{resid:4d}    {x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00  0.00           {name[0]:>2s}"
        )
    lines.append("END")
    pdb = app.PDBFile(StringIO("\n".join(lines) + "\n"))
    ff = app.ForceField("amber14-all.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1.0 * u.femtosecond), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 5000)
    state = ctx.getState(getPositions=True, getEnergy=True)
    assert modeller.topology.getNumAtoms() == 22, modeller.topology.getNumAtoms()
    with open(out, "w") as fh:
        app.PDBFile.writeFile(modeller.topology, state.getPositions(), fh, keepIds=False)
    print(f"wrote {out}: 22 atoms, E = {state.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole):.3f} kcal/mol")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "alanine-dipeptide.pdb")
