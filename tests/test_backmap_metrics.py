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
        evaluate(np.stack([R, R]), np.stack([R, R, R]), z=z)
    with pytest.raises(InputError, match="atoms"):
        evaluate(R[None], R[None, :10], z=z)
    out = evaluate(np.stack([R, R]), np.stack([R, R, R, R]), z=z)
    for key in ("rmsd_all", "rmsd_heavy", "valid_ratio", "clash_rate", "diversity"):
        assert key in out
    assert out["n_samples"] == 2


def test_evaluate_universes_with_energies(ala_md, ala_pdb):
    from backmap.universe import topology_pdb_text, universe_from_pdb_text
    from forcefield.reference import openmm_energy_forces

    ref = ala_md.subset(np.arange(3)).to_universe(topology=str(ala_pdb))
    shifted = ala_md.R[:3] + np.array([1.0, 2.0, 3.0])  # translated copies: all metrics perfect
    gen = universe_from_pdb_text(topology_pdb_text(ref), np.repeat(shifted, 2, axis=0))
    out = evaluate(ref, gen, energies=True)
    assert out["n_frames"] == 3 and out["n_samples"] == 2
    assert out["rmsd_all"] < 1e-3 and out["valid_ratio"] == 1.0 and out["cov"] == 1.0
    E, _ = openmm_energy_forces(ala_pdb, ala_md.R[:3])
    assert out["energy_ref_mean"] == pytest.approx(E.mean(), abs=0.05)  # float32 positions in the Universe
    assert out["energy_mean"] == pytest.approx(out["energy_ref_mean"], abs=0.05)


# ----------------------------------------------------------------------------- symmetry-aware RMSD, empty sets
def _ideal_methyl(R: np.ndarray, c: int, x: int, hs: list[int]) -> np.ndarray:
    """R with the hydrogens ``hs`` of the methyl on carbon ``c`` (bonded to ``x``) placed C3-symmetric about
    the x-c axis (first hydrogen kept, the others turned by 120° and 240°)."""
    from scipy.spatial.transform import Rotation

    out = R.copy()
    axis = (R[c] - R[x]) / np.linalg.norm(R[c] - R[x])
    for k, h in enumerate(hs[1:], start=1):
        out[h] = R[c] + Rotation.from_rotvec(axis * 2 * np.pi * k / 3).apply(R[hs[0]] - R[c])
    return out


def test_symmetry_rmsd_zero_for_methyl_turned_by_120_degrees(ala):
    from scipy.spatial.transform import Rotation

    from backmap.metrics import symmetry_rmsd
    from forcefield.topology import automorphisms

    R, z = ala
    # alanine dipeptide: CB (10) bonded to CA (8), hydrogens 11-13
    assert z[10] == 6 and (z[[11, 12, 13]] == 1).all()
    ref = _ideal_methyl(R, 10, 8, [11, 12, 13])
    turned = ref.copy()
    axis = (ref[10] - ref[8]) / np.linalg.norm(ref[10] - ref[8])
    turned[11:14] = ref[10] + Rotation.from_rotvec(axis * 2 * np.pi / 3).apply(ref[11:14] - ref[10])
    perms = automorphisms(covalent_bonds(ref, z), z)
    plain = kabsch_rmsd(turned, ref)
    # each of the three H's moved by 2 r sin 60° = √3 r ≈ 1.8 Å (r: its distance from the axis), so before
    # alignment the RMSD is sqrt(3 · 3 r² / 22) ≈ 0.66 Å; alignment barely lowers it
    r = np.linalg.norm(np.cross(ref[11] - ref[10], axis))
    assert np.sqrt(((turned - ref) ** 2).sum(-1).mean()) == pytest.approx(np.sqrt(9 * r**2 / 22), rel=1e-9)
    assert 0.6 < plain <= np.sqrt(9 * r**2 / 22)
    assert symmetry_rmsd(turned, ref, perms) < 1e-6
    # and the same through the metrics, beside the plain figure; heavy atoms did not move
    m = compute_metrics(turned[None, None], ref[None], z)
    assert m["rmsd_all"] < 1e-6 and m["rmsd_all_plain"] == pytest.approx(plain)
    assert m["rmsd_heavy"] < 1e-6 and m["n_automorphisms"] == 216
    assert set(m["nan_reasons"]) == {"diversity", "sample_spread"}  # one sample: no sample pairs


def test_symmetry_rmsd_equals_plain_without_symmetry_and_brute_force(ala, rng):
    from backmap.metrics import symmetry_rmsd
    from forcefield.topology import automorphisms

    R, z = ala
    # heavy atoms of alanine dipeptide: no two are equivalent in the element-labelled graph
    heavy = np.flatnonzero(z > 1)
    bh = covalent_bonds(R[heavy], z[heavy])
    ph = automorphisms(bh, z[heavy])
    assert len(ph) == 1
    gen = R[heavy][None] + rng.normal(scale=0.3, size=(5, len(heavy), 3))
    assert np.array_equal(symmetry_rmsd(gen, R[heavy], ph), kabsch_rmsd(gen, R[heavy]))
    # with symmetry: the minimum over all 216 permutations, checked one by one with aligned_rmsd
    perms = automorphisms(covalent_bonds(R, z), z)
    noisy = R[None] + rng.normal(scale=0.3, size=(3, *R.shape))
    noisy[:, 11:14] = noisy[:, [12, 13, 11]]  # methyl H's exchanged
    brute = [min(aligned_rmsd(g[p], R) for p in perms) for g in noisy]
    sym = symmetry_rmsd(noisy, R, perms)
    np.testing.assert_allclose(sym, brute, rtol=1e-9)
    assert (kabsch_rmsd(noisy, R) - sym > 0.2).all()


def test_evaluate_reports_symmetric_and_plain(ala):
    R, z = ala
    swapped = R.copy()
    swapped[[11, 12, 13]] = R[[12, 13, 11]]  # relabelled methyl hydrogens: the same structure
    out = evaluate(R[None], np.stack([swapped, R]), z=z)
    assert out["rmsd_all"] < 1e-6 and out["rmsd_all_plain"] > 0.3 and out["rmsd_heavy"] < 1e-6
    assert out["valid_ratio"] == 1.0


def test_empty_sets_are_errors_or_nan_with_reason(ala):
    R, z = ala
    with pytest.raises(InputError, match="no reference frames"):
        compute_metrics(R[None, None], np.zeros((0, len(z), 3)), z)
    with pytest.raises(InputError, match="no generated"):
        compute_metrics(np.zeros((1, 0, len(z), 3)), R[None], z)
    # one sample per frame: no sample pairs, diversity is NaN with its reason (not 0)
    m = compute_metrics(R[None, None], R[None], z)
    assert np.isnan(m["diversity"]) and np.isnan(m["sample_spread"]) and "diversity" in m["nan_reasons"]
    # samples that all equal their reference: 0/0
    assert np.isnan(diversity(np.repeat(R[None, None], 3, axis=1), R[None]))
    # H2 + a lone H: no heavy-atom pair to clash, no heavy atoms; a molecule without bonds: no graph-edit ratio
    zs = np.array([1, 1, 1])
    pos = np.array([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0], [5.0, 0.0, 0.0]])
    m = compute_metrics(np.stack([pos, pos + 0.01])[None], pos[None], zs)
    for k in ("clash_rate", "rmsd_heavy", "cov"):
        assert np.isnan(m[k]) and m["nan_reasons"][k]
    assert m["graph_edit_ratio"] == 0.0 and m["valid_ratio"] == 1.0  # one H-H bond: defined
    apart = pos * 10.0
    m = compute_metrics(apart[None, None], apart[None], zs)
    assert np.isnan(m["graph_edit_ratio"]) and "no bonds" in m["nan_reasons"]["graph_edit_ratio"]
    with pytest.raises(InputError, match="three or more bonds"):
        clash_counts(pos[None], zs, np.array([[0, 1]]))
    with pytest.raises(InputError, match="COV/MAT"):
        cov_mat(np.zeros((0, len(z), 3)), R[None])


def test_alternating_search_matches_exhaustive(ala, rng):
    """Above the listing cap, skeleton automorphisms with the best assignment in terminal sets give the same
    symmetry-aware RMSD as the 216 listed automorphisms, for samples near the reference."""
    R, z = ala
    gen = R[None, None] + rng.normal(scale=0.15, size=(4, 3, *R.shape))
    for h in ([11, 12, 13], [1, 2, 3], [19, 20, 21]):  # shuffle each methyl's hydrogens differently
        for f in range(4):
            for s in range(3):
                gen[f, s, h] = gen[f, s, rng.permutation(h)]
    ref = np.repeat(R[None], 4, axis=0)
    full = compute_metrics(gen, ref, z)
    alt = compute_metrics(gen, ref, z, max_perms=10)
    assert full["symmetry_search"] == "exhaustive" and alt["symmetry_search"] == "alternating"
    assert full["n_automorphisms"] == alt["n_automorphisms"] == 216
    for k in ("rmsd_all", "rmsd_all_median", "rmsd_heavy"):
        assert alt[k] == pytest.approx(full[k], rel=1e-9)
    assert full["rmsd_all_plain"] > full["rmsd_all"] + 0.2


def test_nearest_cg_baseline_finds_the_frame_itself_and_ignores_rotation(ala_md, rng):
    """Held-out frames that are rotated copies of training frames have their own frame as nearest CG
    neighbour: floor zero; frames not in the pool get a positive floor no smaller than their CG distance."""
    from backmap.recipe import nearest_cg_baseline
    from cg import Mapping
    from forcefield.elements import masses

    beads = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21]]
    m = Mapping.from_indices(beads, masses(ala_md.z), weighting="com")
    train = ala_md[:150]
    held = train[[5, 70, 140]]
    Q = random_rotation(rng)
    held.R = held.R @ Q.T + 4.0
    out = nearest_cg_baseline(m, train, held)
    assert out["nn_rmsd_all"] < 1e-6 and out["nn_cg_rmsd"] < 1e-6
    other = nearest_cg_baseline(m, train, ala_md[[180, 199]])
    assert other["nn_rmsd_all"] > 0.05 and other["nn_cg_rmsd"] > 0.0
    with pytest.raises(InputError):
        nearest_cg_baseline(m, train[:0], held)
