"""Training losses of the backmapping VAE.

total = MSE(coordinates) + beta * KL(q || p) / N + gamma_bond * MSE(bond lengths)
        + gamma_angle * MSE(1-3 distances) + gamma_clash * mean(hinge^2 on non-bonded pairs)

* Coordinates: squared distance between decoded and true atoms, averaged over atoms and frames (Å²); no
  alignment is needed, as the decoder works in the frame of the CG input. Interchangeable atoms (the
  hydrogens of a methyl, :func:`equivalent_groups`) are matched in their best order: otherwise the labels
  make a methyl's three staggered positions three different targets, the prior cannot represent that
  three-fold choice from the CG frame, and prior samples put methyls at random rotor angles.
* KL: between the diagonal Gaussian posterior and the CG-conditioned prior, summed over latent dimensions
  and beads, divided by the atom count N (nats per atom), averaged over frames.
* Bond lengths and bonded geometry: squared errors of the 1-2 (bond) and 1-3 (angle-spanning) distances
  against the same frame's reference; the 1-3 distance fixes the bond angle given the two bond lengths.
* Steric clash: ``max(t_ij - d_ij, 0)^2`` over pairs three or more bonds apart, with
  ``t_ij = min(clash_distance, 0.9 * smallest d_ij seen in the training data)`` (GenZProt uses a 2.0 Å hinge;
  the data-derived cap keeps the hinge from pushing apart genuine close contacts such as hydrogen bonds).
* Prior samples: the bonded and clash terms are also applied (weight ``gamma_prior``) to a decoded draw from
  the prior, against the bond and 1-3 distances of the true frame (these hardly vary between conformers);
  this teaches the decoder to give valid chemistry for every latent the prior proposes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from forcefield.topology import graph_distances


@dataclass
class GeometryTerms:
    """Index pairs for the bonded and clash terms of one molecule (numpy int arrays (k, 2))."""

    bonds: np.ndarray
    angles13: np.ndarray
    nonbonded: np.ndarray
    clash_t: np.ndarray  # (k,) hinge distance per non-bonded pair, Å

    @classmethod
    def build(cls, bonds: np.ndarray, R_train: np.ndarray, clash_distance: float = 2.0) -> "GeometryTerms":
        n = R_train.shape[1]
        D = graph_distances(bonds, n, 3)
        iu, ju = np.triu_indices(n, 1)
        g = D[iu, ju]
        pairs = np.stack([iu, ju], 1)
        nb = pairs[g >= 3]
        sub = R_train[:: max(1, len(R_train) // 2000)]
        dmin = np.linalg.norm(sub[:, nb[:, 0]] - sub[:, nb[:, 1]], axis=-1).min(0) if len(nb) else np.zeros(0)
        return cls(bonds=pairs[g == 1], angles13=pairs[g == 2], nonbonded=nb,
                   clash_t=np.minimum(clash_distance, 0.9 * dmin))


def _pair_d(R: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((R[:, p[:, 0]] - R[:, p[:, 1]]) ** 2).sum(-1) + 1e-10)


def equivalent_groups(bonds: np.ndarray, z: np.ndarray) -> list[list[int]]:
    """Groups of interchangeable atoms: terminal atoms (one bond) of one element on the same atom, e.g. the
    hydrogens of a methyl or NH2 group, or the oxygens of a carboxylate (at least two per group)."""
    bonds = np.asarray(bonds, dtype=int).reshape(-1, 2)
    deg = np.bincount(bonds.ravel(), minlength=len(z))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, j in bonds.tolist():
        for a, b in ((i, j), (j, i)):
            if deg[a] == 1 and deg[b] > 1:
                groups.setdefault((b, int(z[a])), []).append(a)
    return [sorted(g) for g in groups.values() if 2 <= len(g) <= 4]


def group_buffers(module: torch.nn.Module, groups: list[list[int]] | None) -> list[int]:
    """Register ``groups{m}`` (G, m) and ``perms{m}`` (m!, m) buffers on ``module`` for each group size m;
    returns the sizes (for :func:`matched_sq_error`)."""
    import itertools

    sizes = sorted({len(g) for g in groups or []})
    for m in sizes:
        module.register_buffer(f"groups{m}", torch.tensor([g for g in groups if len(g) == m], dtype=torch.long))
        module.register_buffer(f"perms{m}", torch.tensor(list(itertools.permutations(range(m))), dtype=torch.long))
    return sizes


def matched_sq_error(module: torch.nn.Module, sizes: list[int], P: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Mean squared atom error (Å²) of P (..., N, 3) against R (broadcastable), each group of interchangeable
    atoms (buffers of :func:`group_buffers`) matched in its best order: shape (...)."""
    d = ((P - R) ** 2).sum(-1)                                                   # (..., N)
    total = d.sum(-1)
    for m in sizes:
        g, perms = getattr(module, f"groups{m}"), getattr(module, f"perms{m}")
        D = ((P[..., g, :][..., :, None, :] - R[..., g, :][..., None, :, :]) ** 2).sum(-1)  # (..., G, m, m)
        cost = D[..., torch.arange(m, device=P.device), perms].sum(-1)          # (..., G, m!)
        total = total - d[..., g].sum((-1, -2)) + cost.min(-1).values.sum(-1)
    return total / P.shape[-2]


def kl_gaussians(mu_q: torch.Tensor, lv_q: torch.Tensor, mu_p: torch.Tensor, lv_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) summed over the last axis."""
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) / torch.exp(lv_p) - 1.0).sum(-1)


class BackmapLoss(torch.nn.Module):
    """Weighted sum of the terms above; ``forward`` returns (total, dict of detached parts)."""

    def __init__(self, terms: GeometryTerms, beta: float = 0.01, gamma_bond: float = 10.0,
                 gamma_angle: float = 5.0, gamma_clash: float = 10.0, gamma_prior: float = 0.2,
                 groups: list[list[int]] | None = None) -> None:
        """``groups``: interchangeable atoms (:func:`equivalent_groups`) matched in their best order in the
        coordinate term (None: every atom against its own label)."""
        super().__init__()
        self.sizes = group_buffers(self, groups)
        self.register_buffer("bonds", torch.as_tensor(terms.bonds, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("angles13", torch.as_tensor(terms.angles13, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("nonbonded", torch.as_tensor(terms.nonbonded, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("clash_t", torch.as_tensor(terms.clash_t, dtype=torch.float32))
        self.beta, self.gamma_bond, self.gamma_angle, self.gamma_clash = beta, gamma_bond, gamma_angle, gamma_clash
        self.gamma_prior = gamma_prior

    def forward(self, out: dict[str, torch.Tensor], R: torch.Tensor, beta: float | None = None,
                geometry: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """``beta`` overrides the KL weight; ``geometry`` scales the bond, angle and clash weights."""
        P = out["R"]
        beta = self.beta if beta is None else beta
        n_atoms = P.shape[1]
        parts = {"coord": matched_sq_error(self, self.sizes, P, R).mean(),
                 "kl": kl_gaussians(out["mu_q"], out["lv_q"], out["mu_p"], out["lv_p"]).sum(-1).mean() / n_atoms}
        zero = P.new_zeros(())
        parts["bond"] = ((_pair_d(P, self.bonds) - _pair_d(R, self.bonds)) ** 2).mean() if len(self.bonds) else zero
        parts["angle"] = (((_pair_d(P, self.angles13) - _pair_d(R, self.angles13)) ** 2).mean()
                          if len(self.angles13) else zero)
        parts["clash"] = ((torch.relu(self.clash_t.to(P.dtype) - _pair_d(P, self.nonbonded)) ** 2).mean()
                          if len(self.nonbonded) else zero)
        geo = self.gamma_bond * parts["bond"] + self.gamma_angle * parts["angle"] + self.gamma_clash * parts["clash"]
        if "R_prior" in out and self.gamma_prior > 0:
            Q = out["R_prior"]
            parts["bond_prior"] = ((_pair_d(Q, self.bonds) - _pair_d(R, self.bonds)) ** 2).mean() if len(self.bonds) else zero
            parts["angle_prior"] = (((_pair_d(Q, self.angles13) - _pair_d(R, self.angles13)) ** 2).mean()
                                    if len(self.angles13) else zero)
            parts["clash_prior"] = ((torch.relu(self.clash_t.to(Q.dtype) - _pair_d(Q, self.nonbonded)) ** 2).mean()
                                    if len(self.nonbonded) else zero)
            geo = geo + self.gamma_prior * (self.gamma_bond * parts["bond_prior"] + self.gamma_angle * parts["angle_prior"]
                                            + self.gamma_clash * parts["clash_prior"])
        total = parts["coord"] + beta * parts["kl"] + geometry * geo
        return total, {k: float(v.detach()) for k, v in parts.items()}
