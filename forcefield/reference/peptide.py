"""Build peptides from a sequence: ideal geometry, amber atom names, hydrogens from OpenMM.

Heavy atoms are placed from internal coordinates (bond length, angle, torsion; the NeRF construction)
with standard residue geometry (bond lengths and angles close to Engh & Huber, common side-chain
rotamers), on a backbone with chosen φ/ψ (β strand, α helix or polyproline II; trans peptide bonds).
Atom names follow the PDB/amber convention, so OpenMM's amber14 templates apply; hydrogens are added by
OpenMM's ``Modeller.addHydrogens`` (pH 7 protonation states) and a short vacuum minimisation relaxes
the ideal geometry. Units: Å and degrees here; the PDB text is in Å.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any
import numpy as np

from ..errors import InputError

#: one-letter code -> residue name
ONE_TO_THREE = {"A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS", "I": "ILE",
                "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN", "R": "ARG", "S": "SER",
                "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR"}
#: named backbone conformations: (φ, ψ) in degrees
CONFORMATIONS = {"extended": (-135.0, 135.0), "beta": (-135.0, 135.0), "helix": (-57.0, -47.0),
                 "alpha": (-57.0, -47.0), "ppii": (-75.0, 145.0)}
CAPS = ("ace-nme", "zwitterion")

# backbone geometry (Å, degrees)
B_N_CA, B_CA_C, B_C_N, B_C_O = 1.458, 1.525, 1.329, 1.231
A_N_CA_C, A_CA_C_N, A_C_N_CA, A_CA_C_O = 111.2, 116.2, 121.7, 120.5

# CB from (C, N, CA): bond, angle N-CA-CB, torsion C-N-CA-CB (L chirality); proline's ring narrows the angle
_CB = {"PRO": (1.530, 103.0, -120.0)}
_CB_DEFAULT = (1.530, 110.5, -122.6)
# Side chains: (atom, (three reference atoms a, b, c; the new atom bonds to c), bond, angle b-c-new,
# torsion a-b-c-new). CB is placed by the builder (L chirality) for every residue but GLY.
_SC: dict[str, list[tuple[str, tuple[str, str, str], float, float, float]]] = {
    "ALA": [],
    "GLY": [],
    "SER": [("OG", ("N", "CA", "CB"), 1.417, 111.1, 65.0)],
    "CYS": [("SG", ("N", "CA", "CB"), 1.808, 114.0, -65.0)],
    "VAL": [("CG1", ("N", "CA", "CB"), 1.527, 110.7, 175.0), ("CG2", ("N", "CA", "CB"), 1.527, 110.4, -60.0)],
    "THR": [("OG1", ("N", "CA", "CB"), 1.433, 109.2, 60.0), ("CG2", ("N", "CA", "CB"), 1.521, 111.1, -60.0)],
    "ILE": [("CG1", ("N", "CA", "CB"), 1.527, 110.7, -60.0), ("CG2", ("N", "CA", "CB"), 1.527, 110.4, 175.0),
            ("CD1", ("CA", "CB", "CG1"), 1.52, 113.8, 170.0)],
    "LEU": [("CG", ("N", "CA", "CB"), 1.53, 116.1, -60.0), ("CD1", ("CA", "CB", "CG"), 1.524, 110.3, 175.0),
            ("CD2", ("CA", "CB", "CG"), 1.525, 110.6, -65.0)],
    "PRO": [("CG", ("N", "CA", "CB"), 1.495, 104.5, 28.0), ("CD", ("CA", "CB", "CG"), 1.507, 105.5, -34.0)],
    "MET": [("CG", ("N", "CA", "CB"), 1.52, 114.1, -65.0), ("SD", ("CA", "CB", "CG"), 1.81, 112.7, 180.0),
            ("CE", ("CB", "CG", "SD"), 1.79, 100.5, 70.0)],
    "PHE": [("CG", ("N", "CA", "CB"), 1.502, 113.8, -65.0), ("CD1", ("CA", "CB", "CG"), 1.389, 120.7, 90.0),
            ("CD2", ("CA", "CB", "CG"), 1.389, 120.7, -90.0), ("CE1", ("CB", "CG", "CD1"), 1.389, 120.7, 180.0),
            ("CE2", ("CB", "CG", "CD2"), 1.389, 120.7, 180.0), ("CZ", ("CG", "CD1", "CE1"), 1.389, 120.0, 0.0)],
    "TYR": [("CG", ("N", "CA", "CB"), 1.512, 113.9, -65.0), ("CD1", ("CA", "CB", "CG"), 1.389, 120.8, 90.0),
            ("CD2", ("CA", "CB", "CG"), 1.389, 120.8, -90.0), ("CE1", ("CB", "CG", "CD1"), 1.389, 121.2, 180.0),
            ("CE2", ("CB", "CG", "CD2"), 1.389, 121.2, 180.0), ("CZ", ("CG", "CD1", "CE1"), 1.378, 119.6, 0.0),
            ("OH", ("CD1", "CE1", "CZ"), 1.376, 119.9, 180.0)],
    "TRP": [("CG", ("N", "CA", "CB"), 1.498, 113.6, -65.0), ("CD1", ("CA", "CB", "CG"), 1.365, 126.9, 90.0),
            ("CD2", ("CA", "CB", "CG"), 1.433, 126.6, -90.0), ("NE1", ("CB", "CG", "CD1"), 1.374, 110.2, 180.0),
            ("CE2", ("CB", "CG", "CD2"), 1.409, 107.2, 180.0), ("CE3", ("CB", "CG", "CD2"), 1.398, 133.9, 0.0),
            ("CZ2", ("CG", "CD2", "CE2"), 1.394, 122.4, 180.0), ("CZ3", ("CG", "CD2", "CE3"), 1.382, 118.7, 180.0),
            ("CH2", ("CD2", "CE2", "CZ2"), 1.368, 117.5, 0.0)],
    "HIS": [("CG", ("N", "CA", "CB"), 1.497, 113.7, -65.0), ("ND1", ("CA", "CB", "CG"), 1.378, 122.7, -75.0),
            ("CD2", ("CA", "CB", "CG"), 1.354, 131.0, 105.0), ("CE1", ("CB", "CG", "ND1"), 1.321, 109.0, 180.0),
            ("NE2", ("CB", "CG", "CD2"), 1.374, 107.0, 180.0)],
    "ASP": [("CG", ("N", "CA", "CB"), 1.516, 112.6, -65.0), ("OD1", ("CA", "CB", "CG"), 1.249, 118.4, -60.0),
            ("OD2", ("CA", "CB", "CG"), 1.249, 118.4, 120.0)],
    "ASN": [("CG", ("N", "CA", "CB"), 1.516, 112.6, -65.0), ("OD1", ("CA", "CB", "CG"), 1.231, 120.8, -60.0),
            ("ND2", ("CA", "CB", "CG"), 1.328, 116.4, 120.0)],
    "GLU": [("CG", ("N", "CA", "CB"), 1.52, 114.1, -65.0), ("CD", ("CA", "CB", "CG"), 1.516, 112.6, 180.0),
            ("OE1", ("CB", "CG", "CD"), 1.249, 118.4, -60.0), ("OE2", ("CB", "CG", "CD"), 1.249, 118.4, 120.0)],
    "GLN": [("CG", ("N", "CA", "CB"), 1.52, 114.1, -65.0), ("CD", ("CA", "CB", "CG"), 1.516, 112.6, 180.0),
            ("OE1", ("CB", "CG", "CD"), 1.231, 120.8, -60.0), ("NE2", ("CB", "CG", "CD"), 1.328, 116.4, 120.0)],
    "LYS": [("CG", ("N", "CA", "CB"), 1.52, 114.1, -65.0), ("CD", ("CA", "CB", "CG"), 1.52, 111.3, 180.0),
            ("CE", ("CB", "CG", "CD"), 1.52, 111.3, 180.0), ("NZ", ("CG", "CD", "CE"), 1.489, 111.9, 180.0)],
    "ARG": [("CG", ("N", "CA", "CB"), 1.52, 114.1, -65.0), ("CD", ("CA", "CB", "CG"), 1.52, 111.3, 180.0),
            ("NE", ("CB", "CG", "CD"), 1.46, 112.0, 180.0), ("CZ", ("CG", "CD", "NE"), 1.329, 124.2, 180.0),
            ("NH1", ("CD", "NE", "CZ"), 1.326, 120.0, 0.0), ("NH2", ("CD", "NE", "CZ"), 1.326, 120.0, 180.0)],
}


def place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle_deg: float, torsion_deg: float) -> np.ndarray:
    """Position d with |cd| = bond, angle b-c-d = angle and dihedral a-b-c-d = torsion (NeRF)."""
    th, ph = np.radians(angle_deg), np.radians(torsion_deg)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = bond * np.array([-np.cos(th), np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def parse_sequence(sequence: str) -> list[str]:
    """Residue names of a one-letter sequence (``"GYDPETGTWG"``) or of space/dash-separated three-letter
    names (``"ALA-GLY"``); raises InputError naming an unknown residue and its position."""
    s = str(sequence).strip()
    if not s:
        raise InputError("empty peptide sequence")
    three = set(ONE_TO_THREE.values())
    if any(ch in s for ch in " -,") or (len(s) % 3 == 0 and s.upper()[:3] in three and len(s) > 3
                                         and all(s.upper()[i:i + 3] in three for i in range(0, len(s), 3))):
        parts = [p for p in s.replace(",", " ").replace("-", " ").split() if p]
        if len(parts) == 1:
            parts = [s[i:i + 3] for i in range(0, len(s), 3)]
        out = []
        for k, p in enumerate(parts):
            if p.upper() not in three:
                raise InputError(f"sequence {sequence!r}: residue {k + 1} {p!r} is not one of the 20 standard "
                                 "amino acids")
            out.append(p.upper())
        return out
    out = []
    for k, ch in enumerate(s.upper()):
        if ch not in ONE_TO_THREE:
            raise InputError(f"sequence {sequence!r}: residue {k + 1} {ch!r} is not a standard one-letter code "
                             f"({''.join(sorted(ONE_TO_THREE))})")
        out.append(ONE_TO_THREE[ch])
    return out


def _phi_psi(resnames: list[str], conformation: str | tuple[float, float]) -> list[tuple[float, float]]:
    if isinstance(conformation, str):
        if conformation not in CONFORMATIONS:
            raise InputError(f"unknown conformation {conformation!r}; expected one of {sorted(CONFORMATIONS)} "
                             "or a (phi, psi) pair in degrees")
        phi, psi = CONFORMATIONS[conformation]
    else:
        phi, psi = (float(v) for v in conformation)
    # proline's ring fixes φ near -65°
    return [(-65.0 if r == "PRO" else phi, psi) for r in resnames]


def heavy_atoms(resnames: list[str], caps: str = "ace-nme",
                conformation: str | tuple[float, float] = "extended") -> list[tuple[str, dict[str, np.ndarray]]]:
    """Residues (name, {atom name: position Å}) with all heavy atoms, caps included."""
    if caps not in CAPS:
        raise InputError(f"unknown caps {caps!r}; expected one of {CAPS}")
    angles = _phi_psi(resnames, conformation)
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    N = np.zeros(3)
    CA = np.array([B_N_CA, 0.0, 0.0])
    ang = np.radians(180.0 - A_N_CA_C)
    C = CA + B_CA_C * np.array([np.cos(ang), np.sin(ang), 0.0])
    prev = (N, CA, C)
    for k, res in enumerate(resnames):
        phi, psi = angles[k]
        if k > 0:
            pN, pCA, pC = prev
            ppsi = angles[k - 1][1]
            N = place(pN, pCA, pC, B_C_N, A_CA_C_N, ppsi)
            CA = place(pCA, pC, N, B_N_CA, A_C_N_CA, 180.0)
            C = place(pC, N, CA, B_CA_C, A_N_CA_C, phi)
        atoms = {"N": N, "CA": CA, "C": C}
        nxt = place(N, CA, C, B_C_N, A_CA_C_N, psi)  # where the next N goes
        atoms["O"] = place(nxt, CA, C, B_C_O, A_CA_C_O, 180.0)  # in the peptide plane, opposite the next N
        if res != "GLY":
            atoms["CB"] = place(C, N, CA, *_CB.get(res, _CB_DEFAULT))
            for name, (a, b, c), bond, angle, tors in _SC[res]:
                atoms[name] = place(atoms[a], atoms[b], atoms[c], bond, angle, tors)
        if caps == "zwitterion" and k == len(resnames) - 1:
            atoms["OXT"] = place(N, CA, C, 1.25, 117.0, psi)
        out.append((res, atoms))
        prev = (N, CA, C)
    if caps == "ace-nme":
        N1, CA1, C1 = (out[0][1][x] for x in ("N", "CA", "C"))
        phi1 = angles[0][0]
        cC = place(C1, CA1, N1, B_C_N, A_C_N_CA, phi1)
        cO = place(CA1, N1, cC, B_C_O, 122.5, 0.0)
        cM = place(CA1, N1, cC, 1.52, 116.0, 180.0)
        Nl, CAl, Cl = prev
        nN = place(Nl, CAl, Cl, B_C_N, A_CA_C_N, angles[-1][1])
        nC = place(CAl, Cl, nN, 1.458, A_C_N_CA, 180.0)
        out = [("ACE", {"CH3": cM, "C": cC, "O": cO})] + out + [("NME", {"N": nN, "C": nC})]
    return out


def _heavy_pdb(residues: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    lines, serial = [], 0
    for resid, (res, atoms) in enumerate(residues, start=1):
        for name, p in atoms.items():
            serial += 1
            nm = f" {name:<3s}" if len(name) < 4 else name
            lines.append(f"ATOM  {serial:5d} {nm:4s} {res:3s} A{resid:4d}    {p[0]:8.3f}{p[1]:8.3f}{p[2]:8.3f}"
                         f"  1.00  0.00          {name[0]:>2s}")
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def build_peptide(sequence: str, caps: str = "ace-nme", conformation: str | tuple[float, float] = "extended",
                  out: str | os.PathLike | None = None, minimize: bool = True, ph: float = 7.0,
                  forcefield: str = "amber14-all.xml", restraint: float = 10.0) -> str:
    """All-atom PDB of a peptide with amber atom names.

    Parameters
    ----------
    sequence : one-letter (``"GYDPETGTWG"``) or three-letter (``"ALA-GLY-SER"``) residue names.
    caps : ``"ace-nme"`` (acetyl and N-methyl amide caps, neutral ends) or ``"zwitterion"`` (NH3+ / COO-).
    conformation : ``"extended"`` (β, φ/ψ = -135°/135°), ``"helix"`` (-57°/-47°), ``"ppii"`` (-75°/145°) or a
        (φ, ψ) pair in degrees; proline keeps φ = -65°. Peptide bonds are trans.
    out : write the PDB here too (atomically).
    minimize : relax the structure (amber14 in vacuum) with heavy atoms restrained to the built positions
        (``restraint`` kcal/mol/Å²): hydrogens and strained spots (proline rings) relax, the conformation
        is kept (an unrestrained vacuum minimisation would pull charged side chains together).
    ph : protonation states for ``Modeller.addHydrogens`` (histidine gets HID/HIE by its H-bond options).

    Returns
    -------
    The PDB text (Å; chain A, residues numbered from 1, the ACE cap included).
    """
    import openmm.app as app

    resnames = parse_sequence(sequence)
    heavy = heavy_atoms(resnames, caps, conformation)
    pdbf = app.PDBFile(io.StringIO(_heavy_pdb(heavy)))
    ff = app.ForceField(forcefield)
    mod = app.Modeller(pdbf.topology, pdbf.positions)
    try:
        mod.addHydrogens(ff, pH=ph)
    except Exception as e:  # noqa: BLE001 - OpenMM raises ValueError/Exception on template problems
        raise InputError(f"sequence {sequence!r}: OpenMM could not add hydrogens ({e})") from e
    positions = mod.positions
    if minimize:
        positions = _restrained_minimum(ff, mod.topology, mod.positions, restraint)
    buf = io.StringIO()
    app.PDBFile.writeFile(mod.topology, positions, buf, keepIds=False)
    text = buf.getvalue()
    if out is not None:
        from ..fileio import atomic_path

        path = Path(out)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return text


def _restrained_minimum(ff: Any, topology: Any, positions: Any, k_kcal_a2: float) -> Any:
    """Local minimum of amber (vacuum) plus harmonic restraints of heavy atoms to their start (OpenMM units)."""
    import openmm
    import openmm.app as app
    import openmm.unit as u

    system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff)
    if k_kcal_a2 > 0:
        rest = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
        rest.addGlobalParameter("k", k_kcal_a2 * 4.184 * 100.0)  # kcal/mol/Å² -> kJ/mol/nm²
        for name in ("x0", "y0", "z0"):
            rest.addPerParticleParameter(name)
        for atom, p in zip(topology.atoms(), positions.value_in_unit(u.nanometer)):
            if atom.element is not None and atom.element.symbol != "H":
                rest.addParticle(atom.index, list(p))
        system.addForce(rest)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 5000)
    return ctx.getState(getPositions=True).getPositions()


def residue_names(pdb_text: str) -> list[str]:
    """Residue names of a PDB text in order (helper for reports and tests)."""
    import openmm.app as app

    top = app.PDBFile(io.StringIO(pdb_text)).topology
    return [r.name for r in top.residues()]


__all__ = ["CAPS", "CONFORMATIONS", "ONE_TO_THREE", "build_peptide", "heavy_atoms", "parse_sequence", "place",
           "residue_names"]
