"""CG mappings: which atoms form which bead, how positions and forces are mapped.

A :class:`Mapping` is a linear map from N atoms to n beads. Bead positions are weighted centroids
(centre of mass or centre of geometry) of non-overlapping atom groups; bead forces follow the
consistency condition of Noid et al. (J. Chem. Phys. 128, 244114, 2008): a force map ``W`` with
``W @ C.T = I`` where ``C`` is the position map. For non-overlapping groups the bead force is the sum
of its atoms' forces.

Units: Å, amu, kcal/mol/Å.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from forcefield.errors import InputError, where
from forcefield import topology as topo
from forcefield.fileio import atomic_path

WEIGHTINGS = ("com", "cog")


@dataclass
class Mapping:
    """Beads as groups of atom indices with centroid weights.

    Parameters
    ----------
    beads : one integer array of atom indices per bead (non-overlapping).
    atom_masses : (N,) masses of the atoms in amu.
    weighting : ``"com"`` (centre of mass) or ``"cog"`` (centre of geometry).
    names : bead names (default ``B0``, ``B1``, ...).
    atom_bonds : (n_bonds, 2) atomic bond graph; bead bonds are derived from it.
    atom_names : optional atom names (for reports and universes).
    source : free-text provenance ("preset backbone", "learned 6 beads", ...).
    force_weights : optional (n_beads, N) force map W replacing the plain per-bead sum (it must satisfy
        ``W @ C.T = I``); see :meth:`with_optimal_forces`.
    bead_bonds : optional (n, 2) bead pairs bonded at the CG level although their atoms share no bond
        (e.g. consecutive Cα beads of a protein chain, disulfide bridges); :attr:`bonds` adds them.
    bead_types : type label of every bead (e.g. residue names for Cα beads); default: the bead names.
    """

    beads: list[np.ndarray]
    atom_masses: np.ndarray
    weighting: str = "com"
    names: list[str] = field(default_factory=list)
    atom_bonds: np.ndarray | None = None
    atom_names: list[str] | None = None
    source: str = "indices"
    force_weights: np.ndarray | None = None
    bead_bonds: np.ndarray | None = None
    bead_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.atom_masses = np.asarray(self.atom_masses, dtype=float)
        self.beads = [np.asarray(b, dtype=int).reshape(-1) for b in self.beads]
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"unknown weighting {self.weighting!r}; expected one of {WEIGHTINGS}")
        if not self.names:
            self.names = [f"B{i}" for i in range(len(self.beads))]
        if len(self.names) != len(self.beads):
            raise InputError(f"{len(self.names)} bead names for {len(self.beads)} beads")
        if self.atom_bonds is not None:
            self.atom_bonds = np.asarray(self.atom_bonds, dtype=int).reshape(-1, 2)
        self.bead_types = [str(t) for t in (self.bead_types or self.names)]
        if len(self.bead_types) != len(self.beads):
            raise InputError(f"{len(self.bead_types)} bead types for {len(self.beads)} beads")
        if self.bead_bonds is not None:
            try:
                self.bead_bonds = np.sort(topo.as_bonds(self.bead_bonds, len(self.beads)), axis=1)
            except InputError as e:
                raise InputError(f"bead_bonds: {e}") from None
        self.validate()
        if self.force_weights is not None:
            W = np.asarray(self.force_weights, dtype=float)
            if W.shape != (self.n_beads, self.n_atoms) or not np.isfinite(W).all():
                raise InputError(f"force_weights must be a finite ({self.n_beads}, {self.n_atoms}) matrix, "
                                 f"got shape {W.shape}")
            err = float(np.abs(W @ self.matrix().T - np.eye(self.n_beads)).max())
            if err > 1e-6:
                raise InputError(f"force_weights are not consistent with the position map: |W C^T - I| = {err:.1e} "
                                 "(expected 0; mapped forces would not be mean forces)")
            self.force_weights = W

    # ---------------------------------------------------------------- checks
    def validate(self, require_all: bool = False) -> None:
        """Each bead non-empty, indices in range, no atom in two beads (and every atom used if asked)."""
        n = self.n_atoms
        owner = np.full(n, -1)
        for k, (b, name) in enumerate(zip(self.beads, self.names)):
            if b.size == 0:
                raise InputError(f"bead {k} ({name}) is empty")
            bad = b[(b < 0) | (b >= n)]
            if bad.size:
                raise InputError(f"bead {k} ({name}) names atom {int(bad[0])}, but there are {n} atoms")
            clash = b[owner[b] >= 0]
            if clash.size:
                j = int(owner[clash[0]])
                raise InputError(f"bead {k} ({name}) overlaps bead {j} ({self.names[j]}) at atom {int(clash[0])}")
            owner[b] = k
        if require_all and (owner < 0).any():
            raise InputError(f"atom {int(np.flatnonzero(owner < 0)[0])} is in no bead")

    # ---------------------------------------------------------------- sizes
    @property
    def n_atoms(self) -> int:
        return len(self.atom_masses)

    @property
    def n_beads(self) -> int:
        return len(self.beads)

    @property
    def masses(self) -> np.ndarray:
        """Bead masses (amu): the sum of their atoms' masses."""
        return np.array([self.atom_masses[b].sum() for b in self.beads])

    def represented_masses(self) -> np.ndarray:
        """Bead masses (amu) that count every atom once: a bead's own atoms plus each unmapped atom, given to the
        bead nearest along :attr:`atom_bonds` (ties to the lower bead index). For a Cα map each bead then carries
        its residue's mass; with all atoms reachable the beads sum to the molecule's mass. Masses set the CG
        dynamics' time scale (a larger stable time step), not its Boltzmann distribution."""
        if self.atom_bonds is None:
            raise InputError("the mapping has no atomic bond graph, so unmapped atoms cannot be given to beads")
        owner = self.assignment()
        nbr = topo.neighbours(self.atom_bonds, self.n_atoms)
        frontier = [int(i) for b in self.beads for i in b]  # bead order: ties go to the lower index
        while frontier:
            nxt = []
            for i in frontier:
                for j in nbr[i]:
                    if owner[j] < 0:
                        owner[j] = owner[i]
                        nxt.append(j)
            frontier = nxt
        return np.bincount(owner[owner >= 0], weights=self.atom_masses[owner >= 0], minlength=self.n_beads)

    def assignment(self) -> np.ndarray:
        """(N,) bead index of every atom, -1 for atoms in no bead."""
        out = np.full(self.n_atoms, -1)
        for k, b in enumerate(self.beads):
            out[b] = k
        return out

    # ---------------------------------------------------------------- maps
    def matrix(self) -> np.ndarray:
        """Position map C (n_beads, N): rows sum to one; bead positions are ``C @ R``."""
        C = np.zeros((self.n_beads, self.n_atoms))
        for k, b in enumerate(self.beads):
            w = self.atom_masses[b] if self.weighting == "com" else np.ones(len(b))
            C[k, b] = w / w.sum()
        return C

    def force_matrix(self) -> np.ndarray:
        """Force map W (n_beads, N) with ``W @ C.T = I``: ``force_weights`` if set, else 1 for every atom of
        a bead (the sum of its forces)."""
        if self.force_weights is not None:
            return self.force_weights.copy()
        W = np.zeros((self.n_beads, self.n_atoms))
        for k, b in enumerate(self.beads):
            W[k, b] = 1.0
        return W

    def map_positions(self, R: np.ndarray) -> np.ndarray:
        """Bead positions (..., n_beads, 3) of atom positions (..., N, 3)."""
        return np.einsum("bn,...nd->...bd", self.matrix(), np.asarray(R, dtype=float))

    def map_forces(self, F: np.ndarray) -> np.ndarray:
        """Bead forces (..., n_beads, 3) of atom forces (..., N, 3) (kcal/mol/Å)."""
        return np.einsum("bn,...nd->...bd", self.force_matrix(), np.asarray(F, dtype=float))

    def with_optimal_forces(self, F: np.ndarray, ridge: float = 1e-6,
                            constrained: np.ndarray | None = None) -> "Mapping":
        """A copy whose force map has the least mapped-force noise on reference forces F (M, N, 3).

        Same beads and bead positions; the mapped forces are the same mean forces with less variance
        (:func:`cg.forces.optimal_force_map`), so force matching needs fewer frames. ``constrained``: the
        atom pairs held by constraints in the reference MD (:meth:`hbond_pairs` for HBonds runs), whose
        constraint forces the map then cancels.
        """
        from dataclasses import replace

        from .forces import optimal_force_map

        W = optimal_force_map(self.matrix(), F, ridge, constrained)
        return replace(self, force_weights=W, source=f"{self.source}; optimal force map")

    def hbond_pairs(self) -> np.ndarray:
        """(K, 2) atom pairs of :attr:`atom_bonds` with a hydrogen (< 2.5 amu): what HBonds constraints hold."""
        if self.atom_bonds is None or not len(self.atom_bonds):
            raise InputError("the mapping has no atomic bond graph, so its X-H bonds (constraints) are unknown")
        h = self.atom_masses < 2.5
        b = self.atom_bonds
        return b[h[b[:, 0]] | h[b[:, 1]]]

    # ---------------------------------------------------------------- CG topology
    @property
    def bonds(self) -> np.ndarray:
        """(n_bonds, 2) bead pairs (i < j, sorted) joined by at least one atomic bond, or listed in
        :attr:`bead_bonds` (chain bonds between Cα beads, disulfides)."""
        pairs = [np.zeros((0, 2), dtype=int)]
        if self.atom_bonds is not None and len(self.atom_bonds):
            a = self.assignment()
            bi, bj = a[self.atom_bonds[:, 0]], a[self.atom_bonds[:, 1]]
            keep = (bi >= 0) & (bj >= 0) & (bi != bj)
            pairs.append(np.sort(np.stack([bi[keep], bj[keep]], 1), axis=1))
        if self.bead_bonds is not None:
            pairs.append(self.bead_bonds)
        p = np.concatenate(pairs)
        return np.unique(p, axis=0) if len(p) else np.zeros((0, 2), dtype=int)

    @property
    def angles(self) -> np.ndarray:
        """(n_angles, 3) bead triples (i, j, k) along CG bonds, j the vertex, i < k."""
        return topo.angle_triples(self.bonds)

    @property
    def dihedrals(self) -> np.ndarray:
        """(n_dihedrals, 4) bead quadruples i-j-k-l along CG bonds (every path once)."""
        return topo.dihedral_quads(self.bonds)

    @property
    def exclusions(self) -> np.ndarray:
        """(n_pairs, 2) bead pairs i < j excluded from non-bonded terms: 1-2 (bonded) and 1-3 (angle ends)."""
        return topo.exclusions(self.bonds, self.n_beads)

    @property
    def nonbonded_pairs(self) -> np.ndarray:
        """(n_pairs, 2) bead pairs i < j not excluded (more than two CG bonds apart, or unconnected)."""
        return topo.nonbonded_pairs(self.bonds, self.n_beads)

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "cgworkbench-mapping", "version": 1, "n_atoms": self.n_atoms, "weighting": self.weighting,
            "source": self.source, "names": list(self.names), "beads": [b.tolist() for b in self.beads],
            "atom_masses": self.atom_masses.tolist(),
            "atom_bonds": None if self.atom_bonds is None else self.atom_bonds.tolist(),
            "atom_names": None if self.atom_names is None else list(self.atom_names),
            "force_weights": None if self.force_weights is None else self.force_weights.tolist(),
            "bead_bonds": None if self.bead_bonds is None else self.bead_bonds.tolist(),
            "bead_types": list(self.bead_types),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> "Mapping":
        if d.get("format") != "cgworkbench-mapping":
            raise InputError(f"{where(source)}not a cgworkbench mapping (format {d.get('format')!r})")
        try:
            m = cls(beads=d["beads"], atom_masses=d["atom_masses"], weighting=d["weighting"], names=d["names"],
                    atom_bonds=d.get("atom_bonds"), atom_names=d.get("atom_names"), source=d.get("source", "file"),
                    force_weights=d.get("force_weights"), bead_bonds=d.get("bead_bonds"),
                    bead_types=d.get("bead_types") or [])
        except KeyError as e:
            raise InputError(f"{where(source)}mapping file lacks the field {e.args[0]!r}") from None
        if m.n_atoms != d.get("n_atoms", m.n_atoms):
            raise InputError(f"{where(source)}n_atoms {d['n_atoms']} does not match {m.n_atoms} atom masses")
        return m

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mapping as plain JSON (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mapping":
        """Read a mapping written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d, str(path))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_indices(cls, beads: Sequence[Sequence[int]], atom_masses: np.ndarray, weighting: str = "com",
                     names: list[str] | None = None, atom_bonds: np.ndarray | None = None, **kw: Any) -> "Mapping":
        """Mapping from explicit atom index lists (0-based)."""
        return cls(beads=[np.asarray(b) for b in beads], atom_masses=atom_masses, weighting=weighting,
                   names=names or [], atom_bonds=atom_bonds, **kw)

    @classmethod
    def from_preset(cls, atoms: Any, preset: str, weighting: str = "com") -> "Mapping":
        """Preset mapping of an MDAnalysis AtomGroup (or Universe).

        Presets: ``"heavy"`` (one bead per heavy atom, hydrogens join their heavy atom), ``"backbone"``
        (N, CA, C beads), ``"backbone_cb"`` (N, CA, CB, C), ``"backbone_full"`` (N, CA, CB, C, O),
        ``"residue"`` (one bead per residue), ``"ca"`` (Cα atoms only). In the heavy and backbone presets
        every other atom joins the bead nearest to it along bonds, so all atoms are mapped and bead
        forces aggregate whole groups. Bead indices refer to positions within ``atoms``. See
        :mod:`cg.presets`.
        """
        from .presets import from_preset

        return from_preset(cls, atoms, preset, weighting)

    @classmethod
    def from_selections(cls, atoms: Any, selections: Any, weighting: str = "com", complete: bool = False,
                        attach_rest: bool = False) -> "Mapping":
        """One bead per ``{bead name: MDAnalysis selection string}``, selected within ``atoms``.

        Parameters
        ----------
        atoms : AtomGroup or Universe; bead indices refer to positions within it.
        selections : dict (or list of pairs) bead name -> selection string, in bead order.
        weighting : ``"com"`` or ``"cog"``.
        complete : require every atom of ``atoms`` to be in a bead.
        attach_rest : attach atoms no selection matched to the bead nearest along bonds.

        Raises
        ------
        InputError naming the bead whose selection is invalid, matches nothing or overlaps another
        bead, or listing atoms left out (with ``complete``).
        """
        from .selections import from_selections

        return from_selections(cls, atoms, selections, weighting, complete, attach_rest)

    # ---------------------------------------------------------------- graph checks
    def bead_components(self, k: int) -> list[np.ndarray]:
        """Bond-connected components (atom index arrays) of bead ``k`` (needs ``atom_bonds``)."""
        b = self.beads[k]
        if self.atom_bonds is None:
            raise InputError("the mapping has no atom_bonds; connectivity is unknown")
        inside = np.zeros(self.n_atoms, bool)
        inside[b] = True
        e = self.atom_bonds[inside[self.atom_bonds[:, 0]] & inside[self.atom_bonds[:, 1]]]
        parent = {int(i): int(i) for i in b}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in e:
            ri, rj = find(int(i)), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        roots: dict[int, list[int]] = {}
        for i in b:
            roots.setdefault(find(int(i)), []).append(int(i))
        return [np.array(v) for v in roots.values()]

    def is_connected(self) -> bool:
        """Whether every bead's atoms are bond-connected."""
        return all(len(self.bead_components(k)) == 1 for k in range(self.n_beads))

    def check(self, complete: bool = True, connected: bool = True) -> None:
        """Raise :class:`InputError` unless every atom is in one bead (``complete``) and beads are connected."""
        self.validate(require_all=complete)
        if connected:
            for k in range(self.n_beads):
                parts = self.bead_components(k)
                if len(parts) > 1:
                    raise InputError(f"bead {k} ({self.names[k]}) is not bond-connected: {len(parts)} pieces, "
                                     f"e.g. atoms {parts[0].tolist()} and {parts[1].tolist()}")

    def summary(self) -> str:
        """One line per bead: name, mass and atoms (by name when known)."""
        out = [f"{self.n_beads} beads over {self.n_atoms} atoms ({self.weighting}, {self.source})"]
        for k, b in enumerate(self.beads):
            who = [self.atom_names[i] for i in b] if self.atom_names else b.tolist()
            typ = f" [{self.bead_types[k]}]" if self.bead_types[k] != self.names[k] else ""
            mass = self.atom_masses[b].sum()
            out.append(f"  {k:3d} {self.names[k]:>6s}{typ} {mass:8.3f} amu  {' '.join(map(str, who))}")
        return "\n".join(out)
