"""Backmapping metrics on hand-made cases: alignment, bond graphs, clashes, diversity, COV/MAT."""
from __future__ import annotations

import numpy as np
import pytest

from backmap import evaluate
from backmap.metrics import adjacency, clash_counts, compute_metrics, cov_mat, diversity, kabsch_rmsd
from forcefield.errors import InputError
from forcefield.geometry import aligned_rmsd, covalent_bonds, random_rotation


@pytest.fixture(scope="module")
def ala():
    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.universe import open_universe
    from forcefield.universe import elements_of

    u = open_universe(alanine_dipeptide_pdb())
    return u.atoms.positions.astype(float), elements_of(u.atoms)


def test_alignment_removes_rotation_and_matches_geometry(ala, rng):
    R, z = ala
    Q = random_rotation(rng)
    moved = R @ Q.T + np.array([3.0, -7.0, 11.0])
    assert np.sqrt(((moved - R) ** 2).sum(-1).mean()) > 1.0  # really moved
    assert kabsch_rmsd(moved, R) < 1e-6
    noisy = R + rng.normal(scale=0.2, size=R.shape)
    assert kabsch_rmsd(noisy @ Q.T, R) == pytest.approx(aligned_rmsd(noisy, R), abs=1e-9)
    m = compute_metrics(moved[None, None], R[None], z)
    assert m["rmsd_all"] < 1e-6 and m["rmsd_heavy"] < 1e-6
    assert m["valid_ratio"] == 1.0 and m["graph_edit_ratio"] == 0.0 and m["clash_rate"] == 0.0


def test_adjacency_is_covalent_bonds(ala):
    R, z = ala
    A = adjacency(R, z)
    assert np.array_equal(np.argwhere(np.triu(A, 1)), covalent_bonds(R, z))
    assert A.sum() // 2 == 21  # alanine dipeptide: 22 atoms, a tree


def test_broken_bond_is_counted(ala):
    R, z = ala
    broken = R.copy()
    # pull the CB methyl group (CB, HB1-3: atoms 10-13) 1.5 Å away from CA along the CA-CB bond
    u = (R[10] - R[8]) / np.linalg.norm(R[10] - R[8])
    broken[10:14] += 1.5 * u
    gen = np.stack([R, broken])[None]  # one frame, two samples
    m = compute_metrics(gen, R[None], z)
    assert m["valid_ratio"] == 0.5
    n_bonds = adjacency(R, z).sum() // 2
    # sample 2 loses exactly the CA-CB bond (check: graph-edit ratio = 1 / bonds, halved by the mean)
    assert m["graph_edit_ratio"] == pytest.approx(0.5 * 1 / n_bonds)


def test_clash_is_counted(ala):
    R, z = ala
    bonds = covalent_bonds(R, z)
    clashing = R.copy()
    # put the NME methyl carbon (18) 1.5 Å outside the ACE methyl carbon (0): many bonds apart
    d = (R[0] - R.mean(0)) / np.linalg.norm(R[0] - R.mean(0))
    clashing[18] = R[0] + 1.5 * d
    assert clash_counts(R[None], z, bonds).tolist() == [0]
    assert clash_counts(clashing[None], z, bonds).tolist() == [1]
    # a bonded pair at 1.5 Å (C-C bond) is never a clash, nor a 1-3 pair
    m = compute_metrics(np.stack([R, clashing, R, R])[None], R[None], z, ref_bonds=bonds)
    assert m["clash_rate"] == 0.25 and m["clash_pairs"] == 0.25


def test_diversity_and_cov_mat(ala, rng):
    R, z = ala
    ref = R[None]
    # collapsed: 4 near-identical samples 0.3 Å from the reference -> diversity close to 1
    same = np.repeat((R + rng.normal(scale=0.3, size=R.shape))[None, None], 4, axis=1)
    assert diversity(same + rng.normal(scale=1e-3, size=same.shape), ref) > 0.95
    # samples scattered around the reference itself: sample-sample RMSD ~ sqrt(2) x sample-reference RMSD
    noisy = R[None, None] + rng.normal(scale=0.3, size=(1, 4, *R.shape))
    assert diversity(noisy, ref) == pytest.approx(1 - np.sqrt(2), abs=0.15)
    # reference exchangeable with the samples (all drawn alike): diversity ~ 0
    draws = R[None] + rng.normal(scale=0.3, size=(41, *R.shape))
    assert diversity(draws[None, 1:], draws[:1]) == pytest.approx(0.0, abs=0.1)
    cov, mat = cov_mat(noisy[0], np.stack([R, R + rng.normal(scale=2.0, size=R.shape)]), threshold=0.6)
    assert cov == 0.5 and mat > 0.2


def test_evaluate_checks_shapes(ala):
    R, z = ala
    with pytest.raises(InputError, match="whole number of samples"):
        evaluate(np.stack([R, R, R]), np.stack([R, R]), z=z)
    with pytest.raises(InputError, match="atoms"):
        evaluate(R[None, :10], R[None], z=z)
    out = evaluate(np.stack([R, R, R, R]), np.stack([R, R]), z=z)
    for key in ("rmsd_all", "rmsd_heavy", "valid_ratio", "clash_rate", "diversity"):
        assert key in out
    assert out["n_samples"] == 2


def test_evaluate_universes_with_energies(ala_md, ala_pdb):
    from backmap.universe import topology_pdb_text, universe_from_pdb_text
    from forcefield.reference import openmm_energy_forces

    ref = ala_md.subset(np.arange(3)).to_universe(topology=str(ala_pdb))
    shifted = ala_md.R[:3] + np.array([1.0, 2.0, 3.0])  # translated copies: all metrics perfect
    gen = universe_from_pdb_text(topology_pdb_text(ref), np.repeat(shifted, 2, axis=0))
    out = evaluate(gen, ref, energies=True)
    assert out["n_frames"] == 3 and out["n_samples"] == 2
    assert out["rmsd_all"] < 1e-3 and out["valid_ratio"] == 1.0 and out["cov"] == 1.0
    E, _ = openmm_energy_forces(ala_pdb, ala_md.R[:3])
    assert out["energy_ref_mean"] == pytest.approx(E.mean(), abs=0.05)  # float32 positions in the Universe
    assert out["energy_mean"] == pytest.approx(out["energy_ref_mean"], abs=0.05)
