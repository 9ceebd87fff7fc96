"""Symmetry detection: the same permutation group from any number of frames of one molecule, robust to outliers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from forcefield.kernel.symmetry import close_group, consensus_bonds, detect_permutations, detect_symmetries

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def _embed(smiles: str):
    Chem = pytest.importorskip("rdkit.Chem")
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    AllChem.MMFFOptimizeMolecule(mol)
    return mol.GetConformer().GetPositions(), np.array([a.GetAtomicNum() for a in mol.GetAtoms()])


def _rotate_about(X: np.ndarray, origin: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    v = X - origin
    c, s = np.cos(angle), np.sin(angle)
    return origin + v * c + np.cross(k, v) * s + k[None] * (v @ k)[:, None] * (1 - c)


def _frames(R0, methyl_c, anchor, hs, n, rng, free=True):
    """n noisy copies of R0 (random rigid motions) whose methyl turns freely about the anchor-C axis."""
    out = []
    for _ in range(n):
        R = R0.copy()
        if free:
            R[hs] = _rotate_about(R[hs], R[methyl_c], R[methyl_c] - R[anchor], rng.uniform(0, 2 * np.pi))
        R = R + 0.03 * rng.normal(size=R.shape)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append(R @ q.T + rng.normal(size=3))
    return np.array(out)


@pytest.fixture(scope="module")
def aspirin():
    R0, z = _embed(ASPIRIN)
    hs = [a for a in range(len(z)) if z[a] == 1 and np.linalg.norm(R0[a] - R0[0]) < 1.2]
    assert len(hs) == 3
    return R0, z, hs


def _methyl_s3(n, hs):
    out = []
    for o in itertools.permutations(hs):
        p = np.arange(n)
        p[hs] = o
        out.append(tuple(p))
    return set(out)


def test_same_group_from_any_number_of_frames(aspirin):
    """A freely turning methyl: S3 (6 permutations) from 20, 100 and 600 frames, with outlier frames mixed in."""
    R0, z, hs = aspirin
    rng = np.random.default_rng(0)
    pool = _frames(R0, 0, 1, hs, 600, rng)
    # outliers: a stretched C-O bond, a crushed ring, a frame with every atom shaken by 0.4 Å
    bad = pool[[5, 250, 499]].copy()
    bad[0, 3] += 1.5 * (bad[0, 3] - bad[0, 1])
    bad[1, 4:10] = bad[1, 4:10].mean(0) + 0.3 * (bad[1, 4:10] - bad[1, 4:10].mean(0))
    bad[2] += 0.4 * rng.normal(size=bad[2].shape)
    pool[[5, 250, 499]] = bad
    want = _methyl_s3(len(z), hs)
    groups = []
    for m in (20, 100, 600):
        sub = np.sort(rng.choice(len(pool), m, replace=False))
        sub = np.union1d(sub, [5, 250, 499])  # the outliers are always in
        g = detect_permutations(pool[sub], z)
        assert np.array_equal(g[0], np.arange(len(z)))
        groups.append({tuple(p) for p in g})
    assert groups[0] == groups[1] == groups[2] == want
    # the bond graph is the majority vote: the stretched bond survives, no bond is added
    assert {tuple(b) for b in consensus_bonds(pool[:40], z)} == {tuple(b) for b in consensus_bonds(R0[None], z)}


def test_rotations_only_and_frozen_rotor(aspirin):
    """Without mirror images only the rotations (C3) are candidates; a methyl that never turns gives nothing."""
    R0, z, hs = aspirin
    rng = np.random.default_rng(1)
    free = _frames(R0, 0, 1, hs, 200, rng)
    for m in (30, 200):
        g = detect_permutations(free[:m], z, mirror=False, complete_rotors=False)
        assert len(g) == 3 and {tuple(p) for p in g} < _methyl_s3(len(z), hs)
    frozen = _frames(R0, 0, 1, hs, 200, rng, free=False)
    for k in (10, 150):  # two frames (1 %) with the methyl turned by 120°: too rare to be a symmetry of the data
        R = frozen[k]
        R[hs] = _rotate_about(R[hs], R[0], R[0] - R[1], 2 * np.pi / 3)
    rep = detect_symmetries(frozen, z)
    assert len(rep.perms) == 1
    methyl = [b for b in rep.blocks if b.kind == "rotor" and set(b.atoms.tolist()) == set(hs)]
    assert len(methyl) == 1 and 0.005 <= methyl[0].activity < 0.02 and not rep.kept


def test_cap_leaves_out_whole_size_classes():
    """Two methyls, one turning often, one in a fifth of the frames: both are S3 blocks. Without room for
    S3 x S3 both fall back to their rotations together (C3 x C3); without room for that either, both are left
    out (picking one by activity would depend on the frames drawn)."""
    R0, z = _embed("CC(=O)OC")  # methyl acetate: two methyl groups
    hs_a = [a for a in range(len(z)) if z[a] == 1 and np.linalg.norm(R0[a] - R0[0]) < 1.2]
    c_b = 4
    hs_b = [a for a in range(len(z)) if z[a] == 1 and np.linalg.norm(R0[a] - R0[c_b]) < 1.2]
    assert len(hs_a) == len(hs_b) == 3
    rng = np.random.default_rng(2)
    frames = []
    for k in range(300):
        R = R0.copy()
        R[hs_a] = _rotate_about(R[hs_a], R[0], R[0] - R[1], rng.uniform(0, 2 * np.pi))
        if k % 5 == 0:  # the second methyl is turned in a fifth of the frames
            R[hs_b] = _rotate_about(R[hs_b], R[c_b], R[c_b] - R[3], 2 * np.pi / 3)
        frames.append(R + 0.02 * rng.normal(size=R.shape))
    frames = np.array(frames)
    rep = detect_symmetries(frames, z, max_size=10)  # room for C3 x C3 = 9, not S3 x S3 = 36
    assert len(rep.perms) == 9 and len(rep.kept) == 2
    assert {tuple(p) for p in rep.perms} == {tuple(p) for p in detect_permutations(
        frames, z, max_size=10, mirror=False, complete_rotors=False)}
    with pytest.warns(UserWarning, match="left out"):
        rep = detect_symmetries(frames, z, max_size=5)
    assert len(rep.perms) == 1 and len(rep.dropped) == 2
    assert min(b.activity for b in rep.dropped) > 0.1
    g = detect_permutations(frames, z, max_size=36)  # room for both: the product S3 x S3
    assert {tuple(p) for p in g} == {tuple(p) for p in close_group([np.array(p) for p in _methyl_s3(len(z), hs_a)]
                                                                   + [np.array(p) for p in _methyl_s3(len(z), hs_b)])}
    # with rotations only (C3, 3 elements) both fit a cap of 10
    assert len(detect_permutations(frames, z, max_size=10, mirror=False, complete_rotors=False)) == 9
