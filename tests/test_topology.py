"""Bond-graph topology: hand-counted angles and dihedrals, graph distances against SciPy, exclusions,
components, and graph automorphisms that keep bonds and elements and form a group."""
from __future__ import annotations

import numpy as np
import pytest

from forcefield.errors import InputError
from forcefield.topology import (adjacency_matrix, angle_triples, as_bonds, automorphisms, connected_components,
                                 dihedral_quads, exclusions, graph_distances, neighbours, nonbonded_pairs,
                                 restrict_perms)

# isobutanol-like heavy-atom skeleton: 0-1, 1-2, 1-3, 3-4 (a branch at 1), plus an isolated atom 5
BRANCH = np.array([[0, 1], [1, 2], [1, 3], [3, 4]])
# ethanol with hydrogens: C0 C1 O2; H3-5 on C0, H6-7 on C1, H8 on O2
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL = np.array([[0, 1], [1, 2], [0, 3], [0, 4], [0, 5], [1, 6], [1, 7], [2, 8]])


def _random_tree(rng, n):
    return np.array([[int(rng.integers(0, i)), i] for i in range(1, n)])


def test_hand_counted_terms():
    assert neighbours(BRANCH, 6) == [[1], [0, 2, 3], [1], [1, 4], [3], []]
    assert angle_triples(BRANCH).tolist() == [[0, 1, 2], [0, 1, 3], [2, 1, 3], [1, 3, 4]]
    # torsions around the only bond with two non-terminal ends, 1-3: (0|2)-1-3-4
    assert dihedral_quads(BRANCH).tolist() == [[0, 1, 3, 4], [2, 1, 3, 4]]
    assert dihedral_quads(BRANCH, one_per_bond=True).tolist() == [[0, 1, 3, 4]]
    # a 3-ring has angles at every vertex and no torsion i-j-k-l with i != l
    ring = np.array([[0, 1], [1, 2], [2, 0]])
    assert len(angle_triples(ring)) == 3 and len(dihedral_quads(ring)) == 0


def test_counts_on_random_trees_and_agreement_with_priors(rng):
    """Σ C(deg, 2) angles and Σ_bonds (deg_j - 1)(deg_k - 1) torsions; same lists as cg.priors (to be replaced)."""
    from cg.priors import angle_triples as prior_angles
    from cg.priors import dihedral_quads as prior_quads

    for n in (5, 12, 30):
        b = _random_tree(rng, n)
        deg = np.bincount(b.ravel(), minlength=n)
        assert len(angle_triples(b)) == (deg * (deg - 1) // 2).sum()
        assert len(dihedral_quads(b)) == ((deg[b[:, 0]] - 1) * (deg[b[:, 1]] - 1)).sum()
        assert np.array_equal(angle_triples(b), prior_angles(b))
        for one in (False, True):
            assert np.array_equal(dihedral_quads(b, one), prior_quads(b, one))


def test_graph_distances_match_scipy_and_exclusions(rng):
    from scipy.sparse.csgraph import shortest_path

    n = 14
    b = np.r_[_random_tree(rng, 10), [[10, 11], [11, 12]]]  # two components and an isolated atom 13
    ref = shortest_path(adjacency_matrix(b, n).astype(float), unweighted=True)
    D = graph_distances(b, n)
    assert np.array_equal(D, np.where(np.isinf(ref), n, ref).astype(int))
    assert np.array_equal(graph_distances(b, n, 3), np.minimum(D, 3))
    ex, nb = exclusions(b, n), nonbonded_pairs(b, n)
    i, j = np.triu_indices(n, 1)
    assert {tuple(p) for p in ex} == {(a, c) for a, c in zip(i, j) if D[a, c] <= 2}
    assert len(ex) + len(nb) == len(i) and not {tuple(p) for p in ex} & {tuple(p) for p in nb}
    ex14 = exclusions(b, n, include_14=True)
    assert {tuple(p) for p in ex14} == {(a, c) for a, c in zip(i, j) if D[a, c] <= 3}
    assert len(nonbonded_pairs(b, n, exclude_14=True)) == len(i) - len(ex14)


def test_connected_components_match_scipy(rng):
    from scipy.sparse.csgraph import connected_components as scipy_cc

    b = np.r_[_random_tree(rng, 10), [[10, 11], [11, 12]]]
    lab = connected_components(b, 14)
    k, ref = scipy_cc(adjacency_matrix(b, 14))
    assert lab.max() + 1 == k == 3
    # the same partition (labels may be numbered differently)
    assert all(len(set(ref[lab == c])) == 1 for c in range(k))
    assert lab.tolist()[10:] == [1, 1, 1, 2]


def _is_automorphism(p, bonds, labels):
    A = adjacency_matrix(bonds, len(labels))
    return np.array_equal(A[np.ix_(p, p)], A) and np.array_equal(np.asarray(labels)[p], labels)


def test_automorphisms_of_ethanol_form_the_expected_group():
    P = automorphisms(ETHANOL, ETHANOL_Z)
    assert len(P) == 12  # S3 on the methyl H's x S2 on the methylene H's
    assert np.array_equal(P[0], np.arange(9))
    assert all(_is_automorphism(p, ETHANOL, ETHANOL_Z) for p in P)
    rows = {tuple(p) for p in P}
    assert len(rows) == 12 and all(tuple(p[q]) in rows for p in P for q in P)  # closed under products
    # only hydrogens on the same carbon move: the heavy atoms and the hydroxyl H stay
    assert (P[:, [0, 1, 2, 8]] == [0, 1, 2, 8]).all()
    assert set(map(tuple, P[:, 3:6])) == {(3, 4, 5), (3, 5, 4), (4, 3, 5), (4, 5, 3), (5, 3, 4), (5, 4, 3)}
    # labels break symmetry: relabel one methyl H as deuterium-like type "D"
    typed = ["C", "C", "O", "D", "H", "H", "H", "H", "H"]
    assert len(automorphisms(ETHANOL, typed)) == 4


def test_automorphisms_benzene_alanine_dipeptide_and_cap(ala_pdb):
    ring = np.array([[i, (i + 1) % 6] for i in range(6)] + [[i, i + 6] for i in range(6)])
    assert len(automorphisms(ring, [6] * 6 + [1] * 6)) == 12  # D6
    from forcefield.geometry import covalent_bonds
    from forcefield.universe import elements_of, open_universe

    u = open_universe(ala_pdb)
    z = elements_of(u.atoms)
    b = covalent_bonds(u.atoms.positions.astype(float), z)
    P = automorphisms(b, z)
    assert len(P) == 6 ** 3  # three methyl groups, nothing else equivalent
    heavy = np.flatnonzero(z > 1)
    assert len(restrict_perms(P, heavy)) == 1
    with pytest.warns(UserWarning, match="automorphisms"):
        assert len(automorphisms(b, z, max_perms=10)) == 10


def test_restrict_perms_and_bad_input():
    P = automorphisms(ETHANOL, ETHANOL_Z)
    sub = restrict_perms(P, np.array([0, 3, 4, 5]))  # methyl carbon and its hydrogens
    assert len(sub) == 6 and (sub[:, 0] == 0).all()
    with pytest.raises(InputError, match="outside"):
        restrict_perms(P, np.array([3, 6]))
    with pytest.raises(InputError, match="itself"):
        as_bonds([[0, 0]])
    with pytest.raises(InputError, match="beyond"):
        neighbours([[0, 5]], 3)
    assert as_bonds([]).shape == (0, 2) and len(angle_triples(np.zeros((0, 2)))) == 0


def test_factorised_group_equals_full_enumeration(ala_pdb):
    """Skeleton automorphisms x permutations within terminal sets give exactly the VF2 automorphisms."""
    from forcefield.geometry import covalent_bonds
    from forcefield.topology import automorphism_count, expand_terminal, skeleton_automorphisms, terminal_groups
    from forcefield.universe import elements_of, open_universe

    assert [g.tolist() for g in terminal_groups(ETHANOL, ETHANOL_Z)] == [[3, 4, 5], [6, 7]]
    u = open_universe(ala_pdb)
    z = elements_of(u.atoms)
    ring = np.array([[i, (i + 1) % 6] for i in range(6)] + [[i, i + 6] for i in range(6)])
    # acetate-like: C0 (methyl, H 3-5) - C1(=O2)(-O6); two equivalent oxygens on C1
    acetate = np.array([[0, 1], [1, 2], [0, 3], [0, 4], [0, 5], [1, 6]])
    cases = [(ETHANOL, ETHANOL_Z, 12, 1), (covalent_bonds(u.atoms.positions.astype(float), z), z, 216, 1),
             (ring, [6] * 6 + [1] * 6, 12, 12), (acetate, [6, 6, 8, 1, 1, 1, 8], 12, 1)]
    for b, lab, order, n_skel in cases:
        sk = skeleton_automorphisms(b, lab)
        full = expand_terminal(sk, terminal_groups(b, lab))
        assert len(sk) == n_skel and automorphism_count(b, lab) == order == len(full)
        assert {tuple(p) for p in full} == {tuple(p) for p in automorphisms(b, lab)}
        assert np.array_equal(full[0], np.arange(len(lab)))
