"""Preset mappings for molecules and proteins.

Presets (``Mapping.from_preset(atoms, name)``):

``"heavy"``
    one bead per heavy (non-hydrogen) atom; each hydrogen joins the bead of the heavy atom it is bonded
    to (united atoms).
``"backbone"``
    one bead per backbone atom named N, CA or C; every other atom (hydrogens, O, side chain, cap
    methyls) joins the backbone bead it is closest to along bonds.
``"backbone_cb"``
    as ``"backbone"`` with a CB bead too (N, CA, CB, C).
``"backbone_full"``
    N, CA, CB, C and O beads.
``"residue"``
    one bead per residue with all its atoms.
``"ca"``
    one bead per Cα atom holding that atom only; other atoms are in no bead. The bead force is the summed
    force of the Cα atom and its own hydrogens (HA, HA2, HA3): a consistent force map (``W C^T = I``) in
    which the stiff Cα-H bond forces cancel (lower noise than the Cα force alone) and which stays valid
    when X-H bonds are constrained (the constraint force between Cα and HA is internal to the sum).
``"sidechain"``
    two beads per residue (one for glycine): ``BB`` with the backbone atoms (N, CA, C, O and their
    hydrogens) and ``SC`` with the side chain (CB onwards); caps join the nearest bead along bonds.

Biomolecular CG topology: for every preset but ``"heavy"`` the CG bonds come from the residue chain as
well as from shared atom bonds (:func:`chain_bead_bonds`): consecutive residues of one chain that are
peptide-linked (a C-N bond, or C-N closer than 2 Å, or for Cα-only structures Cα-Cα closer than 4.5 Å)
bond the beads holding C(i) and N(i+1) (the Cα beads when those atoms are in no bead), and disulfide
bridges (CYS SG-SG bonded or closer than 2.5 Å) bond the beads holding the two SG atoms (Cα beads in
the ``"ca"`` preset). Bead types (:attr:`Mapping.bead_types`) are residue names for ``"ca"`` and
``"residue"`` beads and for ``SC`` beads (``"BB"`` for backbone beads), atom names otherwise.

Bead positions are centres of mass (``weighting="com"``) or geometry (``"cog"``) of the bead's atoms,
and bead forces are the sums of their atoms' forces, which satisfies the consistency condition
``W C^T = I`` (Noid et al. 2008) for non-overlapping beads. For ``"ca"`` the bead force is that of the Cα
atom and its hydrogens (see above): valid, but noisier than the aggregated forces of the other presets,
which cancel more internal (bond, constraint) forces.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from forcefield.errors import InputError

from .selections import attach_to_nearest_bead, describe_atom, group_info

#: preset name -> backbone atom names that anchor beads (None: special handling)
BACKBONE_ANCHORS = {
    "backbone": ("N", "CA", "C"),
    "backbone_cb": ("N", "CA", "CB", "C"),
    "backbone_full": ("N", "CA", "CB", "C", "O"),
}
PRESETS = ("heavy", "backbone", "backbone_cb", "backbone_full", "residue", "ca", "sidechain")
#: accepted spellings
ALIASES = {"heavy_atoms": "heavy", "heavyatoms": "heavy", "united_atom": "heavy", "bb": "backbone",
           "backbone_o": "backbone_full", "com": "residue", "residues": "residue", "calpha": "ca", "alpha": "ca",
           "bb_sc": "sidechain", "backbone_sidechain": "sidechain", "side_chain": "sidechain"}
#: atoms of the backbone bead of the ``"sidechain"`` preset (amber/PDB names, terminal variants included)
BACKBONE_ATOMS = ("N", "H", "H1", "H2", "H3", "HN", "CA", "HA", "HA2", "HA3", "C", "O", "OXT", "OT1", "OT2", "HXT")
PEPTIDE_CN_MAX = 2.0   # Å: C(i)-N(i+1) distance of a peptide bond when bonds are not in the topology
CA_CA_MAX = 4.5        # Å: consecutive Cα atoms of a Cα-only trace (trans 3.8 Å, cis 2.9 Å)
SS_MAX = 2.5           # Å: SG-SG distance of a disulfide bridge (2.05 Å)


def _is_hydrogen(atoms: Any, masses: np.ndarray) -> np.ndarray:
    els = getattr(atoms, "elements", None)
    if els is not None and all(str(e).strip() for e in els):
        return np.array([str(e).strip().upper() in ("H", "D") for e in els])
    return masses < 2.5


def _anchored(cls: type, atoms: Any, anchors: np.ndarray, info: dict[str, Any], weighting: str, source: str,
              names: list[str], what: str, assign: np.ndarray | None = None, chain: bool = False, **kw: Any) -> Any:
    """Beads from anchor atoms (or a partial ``assign``); every other atom joins the nearest bead along bonds.
    ``chain`` adds the residue-chain bonds (:func:`chain_bead_bonds`)."""
    n = atoms.n_atoms
    if assign is None:
        assign = np.full(n, -1)
        assign[anchors] = np.arange(len(anchors))
    assign = attach_to_nearest_bead(assign, info["atom_bonds"])
    missing = np.flatnonzero(assign < 0)
    if missing.size:
        listed = ", ".join(describe_atom(atoms, i) for i in missing[:5])
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        raise InputError(f"preset {source!r}: {missing.size} atoms are not bonded to any {what}: {listed}{more}; "
                         "select only the molecules the preset applies to (e.g. 'protein')")
    beads = [np.flatnonzero(assign == k) for k in range(len(names))]
    if chain:
        kw["bead_bonds"] = chain_bead_bonds(atoms, assign, info["atom_bonds"])
    return cls(beads=beads, names=names, weighting=weighting, source=f"preset {source}", **info, **kw)


# ----------------------------------------------------------------------------- residue chain
def _residues(atoms: Any) -> tuple[np.ndarray, list[str], list[str]]:
    """Residue position of every atom (0, 1, ... in group order), and per residue its name and chain key."""
    resix = np.asarray(atoms.resindices)
    order = list(dict.fromkeys(resix.tolist()))
    pos = {r: k for k, r in enumerate(order)}
    res_of_atom = np.array([pos[r] for r in resix.tolist()], dtype=int)
    first = [int(np.argmax(res_of_atom == k)) for k in range(len(order))]
    resnames = [str(atoms.resnames[i]) for i in first] if hasattr(atoms, "resnames") else [""] * len(order)
    chain = None
    for attr in ("chainIDs", "segids"):
        try:
            chain = [str(getattr(atoms, attr)[i]) for i in first]
            break
        except (AttributeError, Exception):  # noqa: BLE001 - MDAnalysis raises NoDataError
            continue
    return res_of_atom, resnames, chain if chain is not None else [""] * len(order)


def residue_links(atoms: Any, atom_bonds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Peptide links and disulfide bridges between the residues of an AtomGroup.

    Returns
    -------
    peptide : (n, 2) residue positions (i, i+1) of consecutive residues in one chain that are peptide-bonded:
        a C-N atom bond, or C(i)-N(i+1) closer than :data:`PEPTIDE_CN_MAX`, or (residues without C/N
        atoms, Cα traces) Cα-Cα closer than :data:`CA_CA_MAX`. Chain breaks are not linked.
    disulfide : (m, 2) residue positions of CYS pairs whose SG atoms are bonded or closer than :data:`SS_MAX`.
    Residue positions count residues in group order from 0.
    """
    atoms = getattr(atoms, "atoms", atoms)
    res, resnames, chain = _residues(atoms)
    names = np.array([str(x) for x in atoms.names])
    X = np.asarray(atoms.positions, dtype=float)
    bonded = set()
    if atom_bonds is not None:
        bonded = {(int(a), int(b)) for a, b in np.sort(np.asarray(atom_bonds, dtype=int).reshape(-1, 2), axis=1)}

    def atom(r: int, name: str) -> int | None:
        hit = np.flatnonzero((res == r) & (names == name))
        return int(hit[0]) if hit.size else None

    def linked(i: int, j: int, cut: float) -> bool:
        return (min(i, j), max(i, j)) in bonded or float(np.linalg.norm(X[i] - X[j])) < cut

    pep = []
    for r in range(len(resnames) - 1):
        if chain[r] != chain[r + 1]:
            continue
        c, n = atom(r, "C"), atom(r + 1, "N")
        if c is not None and n is not None:
            if linked(c, n, PEPTIDE_CN_MAX):
                pep.append((r, r + 1))
            continue
        a, b = atom(r, "CA"), atom(r + 1, "CA")
        if a is not None and b is not None and linked(a, b, CA_CA_MAX):
            pep.append((r, r + 1))
    sg = [(r, atom(r, "SG")) for r in range(len(resnames)) if resnames[r].upper() in ("CYS", "CYX", "CYM")]
    sg = [(r, i) for r, i in sg if i is not None]
    ss = [(r1, r2) for k, (r1, i1) in enumerate(sg) for r2, i2 in sg[k + 1:] if linked(i1, i2, SS_MAX)]
    return np.array(pep, dtype=int).reshape(-1, 2), np.array(ss, dtype=int).reshape(-1, 2)


def chain_bead_bonds(atoms: Any, assign: np.ndarray, atom_bonds: np.ndarray | None = None) -> np.ndarray:
    """CG bonds (i < j) from the residue chain for a bead assignment (bead of every atom, -1 for none).

    A peptide link i -> i+1 bonds the bead of C(i) to the bead of N(i+1); a disulfide bonds the beads of the
    two SG atoms. Where such an atom is in no bead (Cα maps) the residue's Cα bead stands in; residues with
    neither (e.g. caps of a Cα map) give no bond.
    """
    atoms = getattr(atoms, "atoms", atoms)
    res, _, _ = _residues(atoms)
    names = np.array([str(x) for x in atoms.names])
    assign = np.asarray(assign, dtype=int)
    pep, ss = residue_links(atoms, atom_bonds)

    def bead(r: int, *prefer: str) -> int:
        for name in prefer:
            hit = np.flatnonzero((res == r) & (names == name))
            if hit.size and assign[hit[0]] >= 0:
                return int(assign[hit[0]])
        return -1

    pairs = [(bead(i, "C", "CA"), bead(j, "N", "CA")) for i, j in pep]
    pairs += [(bead(i, "SG", "CA"), bead(j, "SG", "CA")) for i, j in ss]
    pairs = [tuple(sorted(p)) for p in pairs if min(p) >= 0 and p[0] != p[1]]
    return np.unique(np.array(pairs, dtype=int).reshape(-1, 2), axis=0)


def _chain_kw(atoms: Any, assign: np.ndarray, info: dict[str, Any], types: list[str] | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {"bead_bonds": chain_bead_bonds(atoms, assign, info["atom_bonds"])}
    if types is not None:
        kw["bead_types"] = types
    return kw


# ----------------------------------------------------------------------------- presets
def from_preset(cls: type, atoms: Any, preset: str, weighting: str = "com") -> Any:
    """Build a preset mapping (see the module docstring); ``atoms`` is an AtomGroup or Universe."""
    atoms = getattr(atoms, "atoms", atoms)
    key = str(preset).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    info = group_info(atoms)
    names = np.array([str(x) for x in atoms.names]) if hasattr(atoms, "names") else None
    if key == "heavy":
        heavy = np.flatnonzero(~_is_hydrogen(atoms, info["atom_masses"]))
        if heavy.size == 0:
            raise InputError("preset 'heavy': the group has no heavy atoms")
        bead_names = list(names[heavy]) if names is not None else []
        return _anchored(cls, atoms, heavy, info, weighting, key, bead_names, "heavy atom")
    if names is None:
        raise InputError(f"preset {key!r} needs atom names (N, CA, C, ...) in the topology")
    res, resnames, _ = _residues(atoms)
    if key in BACKBONE_ANCHORS:
        anchors = np.flatnonzero(np.isin(names, BACKBONE_ANCHORS[key]))
        if anchors.size == 0:
            raise InputError(f"preset {key!r}: no atoms named {'/'.join(BACKBONE_ANCHORS[key])} in the group")
        return _anchored(cls, atoms, anchors, info, weighting, key, list(names[anchors]), "backbone bead", chain=True)
    if key == "ca":
        ca = np.flatnonzero(names == "CA")
        if ca.size == 0:
            raise InputError("preset 'ca': no atoms named CA in the group")
        assign = np.full(atoms.n_atoms, -1)
        assign[ca] = np.arange(len(ca))
        W = np.zeros((len(ca), atoms.n_atoms))
        W[np.arange(len(ca)), ca] = 1.0
        hyd = _is_hydrogen(atoms, info["atom_masses"])
        for i, j in np.asarray(info["atom_bonds"], dtype=int).reshape(-1, 2):
            for a, h in ((i, j), (j, i)):
                if assign[a] >= 0 and hyd[h]:
                    W[assign[a], h] = 1.0
        return cls(beads=[[i] for i in ca], names=["CA"] * len(ca), weighting=weighting, source="preset ca",
                   force_weights=W, **info, **_chain_kw(atoms, assign, info, [resnames[res[i]] for i in ca]))
    if key == "sidechain":
        return _sidechain(cls, atoms, info, names, res, resnames, weighting)
    # residue: one bead per residue
    beads = [np.flatnonzero(res == r) for r in range(len(resnames))]
    rn = resnames if hasattr(atoms, "resnames") else []
    return cls(beads=beads, names=rn, weighting=weighting, source="preset residue", **info,
               **_chain_kw(atoms, res, info, rn or None))


def _sidechain(cls: type, atoms: Any, info: dict[str, Any], names: np.ndarray, res: np.ndarray,
               resnames: list[str], weighting: str) -> Any:
    """BB bead (backbone atoms) and SC bead (side chain) per amino-acid residue; other atoms join along bonds."""
    assign = np.full(atoms.n_atoms, -1)
    bead_names: list[str] = []
    types: list[str] = []
    for r in range(len(resnames)):
        here = res == r
        bb = here & np.isin(names, BACKBONE_ATOMS)
        if not (here & (names == "CA")).any():
            continue  # caps and non-amino residues join a neighbouring bead along bonds
        assign[bb] = len(bead_names)
        bead_names.append("BB")
        types.append("BB")
        sc = here & ~bb
        if sc.any():
            assign[sc] = len(bead_names)
            bead_names.append("SC")
            types.append(resnames[r])
    if not bead_names:
        raise InputError("preset 'sidechain': no residue with a CA atom in the group")
    return _anchored(cls, atoms, np.zeros(0, int), info, weighting, "sidechain", bead_names, "residue bead",
                     assign=assign, chain=True, bead_types=types)
