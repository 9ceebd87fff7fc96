"""Turn soft bead preferences into a valid hard mapping, and polish it by local search.

A valid hard mapping puts every atom in exactly one bead, leaves no bead empty, and keeps each bead's
atoms connected in the atomic bond graph (atoms without any bond are exempt from connectivity).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from forcefield.errors import InputError

from .selections import neighbours


def _components(members: list[int], adj: list[list[int]], inside: np.ndarray) -> list[list[int]]:
    seen, comps = set(), []
    for s in members:
        if s in seen:
            continue
        comp, stack = [], [s]
        seen.add(s)
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in adj[i]:
                if inside[j] and j not in seen:
                    seen.add(j)
                    stack.append(j)
        comps.append(comp)
    return comps


def bead_is_connected(assign: np.ndarray, k: int, adj: list[list[int]], skip: int | None = None) -> bool:
    """Whether bead k (optionally without atom ``skip``) is non-empty and bond-connected."""
    inside = assign == k
    if skip is not None:
        inside = inside.copy()
        inside[skip] = False
    members = [int(i) for i in np.flatnonzero(inside)]
    return bool(members) and len(_components(members, adj, inside)) == 1


def repair_assignment(assign: np.ndarray, score: np.ndarray, bonds: np.ndarray, max_rounds: int | None = None,
                      ) -> np.ndarray:
    """Make a hard assignment valid: connected, non-empty beads.

    Parameters
    ----------
    assign : (N,) bead of each atom (e.g. argmax of the logits).
    score : (n_beads, N) preference of each atom for each bead (logits); higher is better.
    bonds : (n_bonds, 2) atomic bond graph.

    Pieces of a bead cut off from its largest (highest-score) piece move atom by atom to a bonded
    neighbouring bead (the one they prefer most); an empty bead takes the atom that prefers it most among
    those whose removal keeps their own bead connected and non-empty.
    """
    n_beads, N = score.shape
    assign = np.asarray(assign, dtype=int).copy()
    adj = neighbours(N, bonds)
    bonded = np.array([len(a) > 0 for a in adj])
    for _ in range(max_rounds or 4 * N * n_beads + 10):
        changed = False
        for k in range(n_beads):
            inside = assign == k
            members = [int(i) for i in np.flatnonzero(inside & bonded)]
            comps = _components(members, adj, inside) if members else []
            if len(comps) <= 1:
                continue
            keep = max(range(len(comps)), key=lambda c: (len(comps[c]), score[k, comps[c]].sum()))
            for c, comp in enumerate(comps):
                if c == keep:
                    continue
                for i in comp:
                    opts = {int(assign[j]) for j in adj[i] if assign[j] != k}
                    if opts:
                        assign[i] = max(opts, key=lambda b: score[b, i])
                        changed = True
                        break
        if changed:
            continue
        counts = np.bincount(assign, minlength=n_beads)
        for k in np.flatnonzero(counts == 0):
            cand = [i for i in np.argsort(-(score[k] - score[assign, np.arange(N)]))
                    if np.sum(assign == assign[i]) > 1 and bead_is_connected(assign, assign[i], adj, skip=i)]
            if not cand:
                raise InputError(f"cannot fill empty bead {k}: too many beads ({n_beads}) for {N} atoms?")
            assign[cand[0]] = k
            changed = True
            break
        if not changed:
            return assign
    raise RuntimeError("mapping repair did not converge")


def refine_assignment(assign: np.ndarray, bonds: np.ndarray, loss: Callable[[np.ndarray], float],
                      max_sweeps: int = 50, progress: bool = False) -> tuple[np.ndarray, float, int]:
    """Greedy local search: move single atoms to a bonded neighbouring bead while the loss drops.

    Every move keeps the mapping valid (the donor bead stays non-empty and connected; the atom joins a
    bead it is bonded to). Each sweep applies the best improving move. Returns (assignment, loss, moves).
    """
    assign = np.asarray(assign, dtype=int).copy()
    adj = neighbours(len(assign), bonds)
    best = loss(assign)
    moves = 0
    for _ in range(max_sweeps):
        choice = None
        for i in range(len(assign)):
            a = int(assign[i])
            targets = {int(assign[j]) for j in adj[i] if assign[j] != a}
            if not targets or np.sum(assign == a) < 2 or not bead_is_connected(assign, a, adj, skip=i):
                continue
            for b in sorted(targets):
                trial = assign.copy()
                trial[i] = b
                val = loss(trial)
                if val < best - 1e-12 * abs(best) and (choice is None or val < choice[2]):
                    choice = (i, b, val)
        if choice is None:
            break
        assign[choice[0]] = choice[1]
        best = choice[2]
        moves += 1
    return assign, best, moves
