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
    one bead per Cα atom holding that atom only; other atoms are in no bead.

Bead positions are centres of mass (``weighting="com"``) or geometry (``"cog"``) of the bead's atoms,
and bead forces are the sums of their atoms' forces, which satisfies the consistency condition
``W C^T = I`` (Noid et al. 2008) for non-overlapping beads. For ``"ca"`` the bead force is the Cα atom's
own force: valid (its conditional mean is the mean force) but noisier than the aggregated forces of
the other presets, which also cancel internal (bond, constraint) forces.
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
PRESETS = ("heavy", "backbone", "backbone_cb", "backbone_full", "residue", "ca")
#: accepted spellings
ALIASES = {"heavy_atoms": "heavy", "heavyatoms": "heavy", "united_atom": "heavy", "bb": "backbone",
           "backbone_o": "backbone_full", "com": "residue", "residues": "residue", "calpha": "ca", "alpha": "ca"}


def _is_hydrogen(atoms: Any, masses: np.ndarray) -> np.ndarray:
    els = getattr(atoms, "elements", None)
    if els is not None and all(str(e).strip() for e in els):
        return np.array([str(e).strip().upper() in ("H", "D") for e in els])
    return masses < 2.5


def _anchored(cls: type, atoms: Any, anchors: np.ndarray, info: dict[str, Any], weighting: str, source: str,
              names: list[str], what: str) -> Any:
    n = atoms.n_atoms
    assign = np.full(n, -1)
    assign[anchors] = np.arange(len(anchors))
    assign = attach_to_nearest_bead(assign, info["atom_bonds"])
    missing = np.flatnonzero(assign < 0)
    if missing.size:
        listed = ", ".join(describe_atom(atoms, i) for i in missing[:5])
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        raise InputError(f"preset {source!r}: {missing.size} atoms are not bonded to any {what}: {listed}{more}; "
                         "select only the molecules the preset applies to (e.g. 'protein')")
    beads = [np.flatnonzero(assign == k) for k in range(len(anchors))]
    return cls(beads=beads, names=names, weighting=weighting, source=f"preset {source}", **info)


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
    if key in BACKBONE_ANCHORS:
        anchors = np.flatnonzero(np.isin(names, BACKBONE_ANCHORS[key]))
        if anchors.size == 0:
            raise InputError(f"preset {key!r}: no atoms named {'/'.join(BACKBONE_ANCHORS[key])} in the group")
        return _anchored(cls, atoms, anchors, info, weighting, key, list(names[anchors]), "backbone bead")
    if key == "ca":
        ca = np.flatnonzero(names == "CA")
        if ca.size == 0:
            raise InputError("preset 'ca': no atoms named CA in the group")
        return cls(beads=[[i] for i in ca], names=["CA"] * len(ca), weighting=weighting, source="preset ca", **info)
    # residue
    resix = np.asarray(atoms.resindices)
    order = list(dict.fromkeys(resix.tolist()))
    beads = [np.flatnonzero(resix == r) for r in order]
    rn = [str(atoms[b[0]].resname) for b in beads] if hasattr(atoms, "resnames") else []
    return cls(beads=beads, names=rn, weighting=weighting, source="preset residue", **info)
