"""Prior CG potentials fitted by Boltzmann inversion of the mapped reference.

Terms (all energies in kcal/mol, lengths in Å, angles in radians):

* harmonic bonds      ``U = k/2 (r - r0)^2``       fitted to ``-kT ln(p(r)/r^2)``
* harmonic angles     ``U = k/2 (θ - θ0)^2``       fitted to ``-kT ln(p(θ)/sin θ)``
* Fourier dihedrals   ``U = Σ_n a_n cos(nφ) + b_n sin(nφ)``  fitted to ``-kT ln p(φ)``, one torsion per
  central bond (torsions about the same bond are near-copies; priors on each would count it twice),
  damped smoothly to zero as a bond angle nears 180° (:func:`collinear_damping`), where φ is undefined
  and the forces of a plain torsion potential diverge
* repulsion           ``U = ε (σ/r)^p`` on pairs not joined by a bond or an angle, with ``ε = kT`` and
  ``σ`` the smallest distance the pair reaches in the reference (short range: ``U(σ) = kT``).

The Jacobians (``r^2`` for bonds, ``sin θ`` for angles) are divided out before the fit, so a harmonic
potential sampled exactly is recovered exactly (up to sampling noise). Fits are weighted least squares on
histograms (weights = counts for bonds/angles; dihedrals use a floored histogram, so unsampled torsion
regions get a high but finite energy rather than a spurious minimum).

:class:`Priors` is a ``torch.nn.Module`` whose ``forward(x)`` maps bead positions (B, n, 3) to energies (B,).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from forcefield.errors import InputError
from forcefield.topology import angle_triples, dihedral_quads  # noqa: F401 - re-exported
from forcefield.topology import nonbonded_pairs as _nonbonded_pairs
from forcefield.units import kT as kT_of

#: fewest frames a prior term is fitted to
MIN_SAMPLES = 10


# ----------------------------------------------------------------------------- topology
# The bond-graph lists live once, in forcefield.topology (angle_triples and dihedral_quads are re-exported).
def nonbonded_pairs(bonds: np.ndarray, n_beads: int) -> np.ndarray:
    """(n_pairs, 2) bead pairs i < j not joined by a bond nor the ends of an angle (1-2 and 1-3 excluded)."""
    return _nonbonded_pairs(bonds, n_beads)


# ----------------------------------------------------------------------------- torch geometry
def bond_lengths(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Distances (B, P) of bead pairs (P, 2) in positions x (B, n, 3)."""
    return (x[:, pairs[:, 1]] - x[:, pairs[:, 0]]).norm(dim=-1)


def bond_angles(x: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Angles (B, T) in radians at the middle bead of each triple (T, 3); atan2 form (smooth gradients)."""
    a = x[:, triples[:, 0]] - x[:, triples[:, 1]]
    b = x[:, triples[:, 2]] - x[:, triples[:, 1]]
    return torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))


def torsions(x: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (B, Q) in (-π, π] of quadruples (Q, 4); same convention as forcefield.geometry."""
    b0 = x[:, quads[:, 0]] - x[:, quads[:, 1]]
    b1 = x[:, quads[:, 2]] - x[:, quads[:, 1]]
    b2 = x[:, quads[:, 3]] - x[:, quads[:, 2]]
    b1n = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    return torch.atan2((torch.linalg.cross(b1n, v) * w).sum(-1), (v * w).sum(-1))


def torsion_components(x: torch.Tensor, quads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin θ1 sin θ2 cos φ`` and ``sin θ1 sin θ2 sin φ`` (B, Q) of quadruples (Q, 4).

    θ1, θ2 are the two bond angles of the torsion. Unlike cos φ and sin φ these are smooth everywhere
    (polynomials in the unit bond vectors: ``n1·n2`` and ``(n1 × n2)·u2`` with ``n1 = u1 × u2``,
    ``n2 = u2 × u3``), so forces stay bounded when three beads line up, where φ itself is undefined.
    They keep the sign of φ (chirality).
    """
    u = [x[:, quads[:, k + 1]] - x[:, quads[:, k]] for k in range(3)]
    u = [v / v.norm(dim=-1, keepdim=True) for v in u]
    n1, n2 = torch.linalg.cross(u[0], u[1]), torch.linalg.cross(u[1], u[2])
    return (n1 * n2).sum(-1), (torch.linalg.cross(n1, n2) * u[1]).sum(-1)


def collinear_damping(x: torch.Tensor, quads: torch.Tensor, start_deg: float = 155.0,
                      end_deg: float = 178.0) -> torch.Tensor:
    """Factor (B, Q) in [0, 1] that takes a torsion term smoothly (C2) to zero as either of its bond angles
    goes from ``start_deg`` to ``end_deg``: there φ is undefined and a plain torsion potential's forces
    diverge like 1/sin θ (the instability that combined bending-torsion potentials avoid, Bulacu et al.,
    JCTC 9, 3282, 2013). Equal to 1 below ``start_deg``, so Boltzmann-inverted torsions are unchanged
    wherever the angles stay clear of 180°.
    """
    th = torch.stack([bond_angles(x, quads[:, :3]), bond_angles(x, quads[:, 1:])], -1)
    a, b = np.radians(start_deg), np.radians(end_deg)
    t = ((th - a) / (b - a)).clamp(0.0, 1.0)
    return (1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t * t)).prod(-1)


# ----------------------------------------------------------------------------- fits (numpy)
def _check_samples(v: np.ndarray, what: str, kind: str) -> None:
    """InputError naming the term (``what``) for too few, non-finite or constant samples."""
    name = f"{what}: " if what else ""
    if v.size < MIN_SAMPLES:
        raise InputError(f"{name}{v.size} frames; a {kind} prior needs at least {MIN_SAMPLES} (the histogram would "
                         "be empty or a single spike)")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise InputError(f"{name}value at frame {int(bad[0])} is not finite ({bad.size} of {v.size} frames); "
                         "beads on top of each other or in a line?")
    if np.ptp(v) < 1e-9 * max(1.0, float(np.abs(v).max())):
        raise InputError(f"{name}the same value {float(v[0]):.6g} in all {v.size} frames: a degenerate histogram "
                         f"(rigid or constrained geometry); no {kind} prior can be fitted, leave the term out")


def fit_harmonic(values: np.ndarray, temperature: float, jacobian: str = "none", bins: int = 60,
                 what: str = "") -> tuple[float, float]:
    """Boltzmann-inverted harmonic fit: returns (k, x0) with U = k/2 (x - x0)^2.

    ``jacobian``: ``"r2"`` (bond lengths), ``"sin"`` (angles) or ``"none"``; it is divided out of the
    histogram before inversion. Weighted least squares of a parabola on ``-kT ln p``, weights = counts.
    If the parabola is not a confining well inside the sampled range (or is much broader than the samples),
    the moments are used instead: ``k = kT / var``, ``x0 = mean``. Raises InputError naming ``what`` (e.g.
    ``"bond 3-4 (CA-CA)"``) and the frame count for too few, non-finite or constant samples.
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    _check_samples(v, what, "harmonic")
    lo, hi = np.percentile(v, [0.05, 99.95])
    if hi - lo < 1e-9:  # all but a few outliers identical
        lo, hi = float(v.min()), float(v.max())
    h, e = np.histogram(v, bins=bins, range=(lo, hi))
    c = 0.5 * (e[1:] + e[:-1])
    jac = {"none": np.ones_like(c), "r2": c**2, "sin": np.sin(np.clip(c, 1e-6, np.pi - 1e-6))}[jacobian]
    ok = h > 0
    y = -kT_of(temperature) * np.log(h[ok] / jac[ok])
    w = np.sqrt(h[ok].astype(float))
    A = np.stack([np.ones(ok.sum()), c[ok], c[ok] ** 2], 1)
    coef, *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
    k, x0 = float(2 * coef[2]), float(-coef[1] / (2 * coef[2])) if coef[2] > 0 else np.nan
    if coef[2] <= 0 or not lo <= x0 <= hi or k < 0.5 * kT_of(temperature) / v.var():
        # not confined, minimum outside the data, or far broader than the samples (a skewed or bimodal
        # distribution, e.g. an angle that follows the backbone torsions): fall back on the moments
        return kT_of(temperature) / v.var(), float(v.mean())
    return k, x0


def fit_fourier(phi: np.ndarray, temperature: float, n_terms: int = 6, bins: int = 72,
                narrow: float = 0.9, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Fourier coefficients (a_n, b_n), n = 1..n_terms, of ``-kT ln p(φ)``.

    Broad or multimodal distributions: least squares on a floored histogram. Narrow unimodal ones (mean
    resultant length ``|<e^{iφ}>| > narrow``, e.g. planar amides) get a single cosine
    ``U = kT κ (1 - cos(φ - μ))``, the Boltzmann inversion of a von Mises distribution with the maximum
    likelihood κ: a truncated Fourier series cannot follow such a narrow well (it rings and creates false
    minima), while the cosine keeps a high barrier everywhere away from the sampled angle. Raises InputError
    naming ``what`` for too few, non-finite or constant samples.
    """
    p = np.asarray(phi, dtype=float).reshape(-1)
    _check_samples(p, what, "Fourier dihedral")
    z = np.exp(1j * p).mean()
    rbar = float(abs(z))
    if rbar > narrow:
        kappa = 1.0 / (rbar**3 - 4 * rbar**2 + 3 * rbar)  # ML estimate for large κ (Best & Fisher 1981)
        K = kT_of(temperature) * kappa
        a, b = np.zeros(n_terms), np.zeros(n_terms)
        a[0], b[0] = -K * np.cos(np.angle(z)), -K * np.sin(np.angle(z))
        return a, b
    h, e = np.histogram(p, bins=bins, range=(-np.pi, np.pi))
    c = 0.5 * (e[1:] + e[:-1])
    y = -kT_of(temperature) * np.log(np.maximum(h, 0.5) / (len(p) * (e[1] - e[0])))
    n = np.arange(1, n_terms + 1)
    A = np.concatenate([np.ones((bins, 1)), np.cos(c[:, None] * n), np.sin(c[:, None] * n)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return coef[1:n_terms + 1], coef[n_terms + 1:]


# ----------------------------------------------------------------------------- module
@dataclass
class PriorTerms:
    """Index lists of a bead topology (numpy int arrays)."""

    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    pairs: np.ndarray

    @classmethod
    def from_bonds(cls, bonds: np.ndarray, n_beads: int, dihedrals: bool = True, repulsion: bool = True,
                   one_per_bond: bool = True) -> "PriorTerms":
        bonds = np.asarray(bonds, dtype=int).reshape(-1, 2)
        if bonds.size and (bonds.min() < 0 or bonds.max() >= n_beads):
            raise InputError(f"bond list names bead {int(bonds.max())}, but there are {n_beads} beads")
        return cls(bonds, angle_triples(bonds),
                   dihedral_quads(bonds, one_per_bond) if dihedrals else np.zeros((0, 4), int),
                   nonbonded_pairs(bonds, n_beads) if repulsion else np.zeros((0, 2), int))


class Priors(nn.Module):
    """Sum of prior terms; ``forward(x)`` gives energies (B,) in kcal/mol for positions (B, n, 3) in Å.

    Build with :meth:`fit` (Boltzmann inversion of reference CG coordinates) or from a state dict
    (:meth:`from_state`). All parameters are buffers: force matching trains only the network.
    """

    KEYS = ("bond_idx", "bond_k", "bond_r0", "angle_idx", "angle_k", "angle_t0", "dih_idx", "dih_a", "dih_b",
            "rep_idx", "rep_sigma")

    def __init__(self, tensors: dict[str, torch.Tensor], n_beads: int, temperature: float, rep_power: int = 6,
                 damp_collinear: bool = True) -> None:
        super().__init__()
        for k in self.KEYS:
            self.register_buffer(k, torch.as_tensor(tensors[k]))
        self.n_beads, self.temperature, self.rep_power = int(n_beads), float(temperature), int(rep_power)
        self.damp_collinear = bool(damp_collinear)

    # ------------------------------------------------------------- construction
    @classmethod
    def fit(cls, R: np.ndarray, bonds: np.ndarray, temperature: float, n_fourier: int = 6, dihedrals: bool = True,
            repulsion: bool = True, rep_power: int = 6, all_dihedrals: bool = False,
            names: list[str] | None = None) -> "Priors":
        """Fit every term to reference bead positions R (M, n, 3) in Å at ``temperature`` (K).

        Dihedral priors: one torsion per central bond (see :func:`dihedral_quads`) unless ``all_dihedrals``.
        Repulsion acts on bead pairs more than two bonds apart (1-2 and 1-3 pairs excluded). ``names``
        (bead names or types) only label error messages: a term with too few frames, non-finite values or
        a degenerate (constant) histogram raises InputError naming it, e.g. ``"angle 2-3-4 (TYR-ASP-PRO)"``.
        """
        from forcefield.geometry import angles as np_angles
        from forcefield.geometry import dihedrals as np_dihedrals
        from forcefield.geometry import distances

        R = np.asarray(R, dtype=float)
        if R.ndim != 3 or R.shape[-1] != 3:
            raise InputError(f"bead positions must be (frames, beads, 3), got shape {R.shape}")
        n = R.shape[1]
        if len(R) == 0:
            raise InputError("no frames to fit priors to (bead positions have shape "
                             f"{R.shape}); a prior needs at least {MIN_SAMPLES}")
        t = PriorTerms.from_bonds(bonds, n, dihedrals, repulsion, one_per_bond=not all_dihedrals)

        def label(kind: str, idx: np.ndarray) -> str:
            who = "-".join(str(int(i)) for i in idx)
            return f"{kind} {who}" + (f" ({'-'.join(str(names[int(i)]) for i in idx)})" if names else "")

        bk = [fit_harmonic(distances(R, b[0], b[1]), temperature, "r2", what=label("bond", b)) for b in t.bonds]
        ak = [fit_harmonic(np_angles(R, a), temperature, "sin", what=label("angle", a)) for a in t.angles]
        dk = [fit_fourier(np_dihedrals(R, q)[..., 0], temperature, n_fourier, what=label("dihedral", q))
              for q in t.dihedrals]
        rs = [float(distances(R, p[0], p[1]).min()) for p in t.pairs]
        for p, r in zip(t.pairs, rs):
            if not np.isfinite(r) or r < 1e-3:
                raise InputError(f"{label('pair', p)}: the beads come within {r:.3g} Å of each other in {len(R)} "
                                 "frames; a repulsion σ needs a positive closest distance (overlapping beads?)")
        f = torch.float64
        tensors = {
            "bond_idx": torch.as_tensor(t.bonds, dtype=torch.long),
            "bond_k": torch.tensor([k for k, _ in bk], dtype=f), "bond_r0": torch.tensor([r for _, r in bk], dtype=f),
            "angle_idx": torch.as_tensor(t.angles, dtype=torch.long),
            "angle_k": torch.tensor([k for k, _ in ak], dtype=f), "angle_t0": torch.tensor([a for _, a in ak], dtype=f),
            "dih_idx": torch.as_tensor(t.dihedrals, dtype=torch.long),
            "dih_a": torch.tensor(np.array([a for a, _ in dk]).reshape(-1, n_fourier), dtype=f),
            "dih_b": torch.tensor(np.array([b for _, b in dk]).reshape(-1, n_fourier), dtype=f),
            "rep_idx": torch.as_tensor(t.pairs, dtype=torch.long), "rep_sigma": torch.tensor(rs, dtype=f),
        }
        return cls(tensors, n, temperature, rep_power)

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the module (tensors and plain numbers; safe for weights_only loads)."""
        return {"tensors": {k: getattr(self, k).detach().cpu() for k in self.KEYS}, "n_beads": self.n_beads,
                "temperature": self.temperature, "rep_power": self.rep_power, "damp_collinear": self.damp_collinear}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "Priors":
        # potentials saved before the damping existed keep their plain torsions
        return cls(s["tensors"], s["n_beads"], s["temperature"], s.get("rep_power", 6), s.get("damp_collinear", False))

    # ------------------------------------------------------------- energy
    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energies (B,) of each term for positions x (B, n, 3)."""
        dt = x.dtype
        out = {}
        r = bond_lengths(x, self.bond_idx)
        out["bonds"] = (0.5 * self.bond_k.to(dt) * (r - self.bond_r0.to(dt)) ** 2).sum(-1)
        th = bond_angles(x, self.angle_idx)
        out["angles"] = (0.5 * self.angle_k.to(dt) * (th - self.angle_t0.to(dt)) ** 2).sum(-1)
        if len(self.dih_idx):
            phi = torsions(x, self.dih_idx)
            nn_ = torch.arange(1, self.dih_a.shape[1] + 1, device=x.device, dtype=dt)
            ang = phi[..., None] * nn_
            u = (self.dih_a.to(dt) * torch.cos(ang) + self.dih_b.to(dt) * torch.sin(ang)).sum(-1)
            if self.damp_collinear:
                u = u * collinear_damping(x, self.dih_idx)
            out["dihedrals"] = u.sum(-1)
        else:
            out["dihedrals"] = torch.zeros(x.shape[0], dtype=dt, device=x.device)
        if len(self.rep_idx):
            d = bond_lengths(x, self.rep_idx)
            out["repulsion"] = kT_of(self.temperature) * ((self.rep_sigma.to(dt) / d) ** self.rep_power).sum(-1)
        else:
            out["repulsion"] = torch.zeros(x.shape[0], dtype=dt, device=x.device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(x).values())

    def energy_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B,) and forces (B, n, 3) in x's dtype, analytic (no autograd; :mod:`cg.analytic_forces`)."""
        from .analytic_forces import prior_energy_forces

        return prior_energy_forces(self, x)

    def describe(self) -> str:
        """One line per bond/angle (parameters) and a count of the other terms."""
        lines = [f"bond {i}-{j}: k={k:.1f} kcal/mol/Å², r0={r:.3f} Å" for (i, j), k, r in
                 zip(self.bond_idx.tolist(), self.bond_k.tolist(), self.bond_r0.tolist())]
        lines += [f"angle {i}-{j}-{k}: k={kk:.1f} kcal/mol/rad², θ0={np.degrees(t):.1f}°" for (i, j, k), kk, t in
                  zip(self.angle_idx.tolist(), self.angle_k.tolist(), self.angle_t0.tolist())]
        lines.append(f"{len(self.dih_idx)} Fourier dihedrals ({self.dih_a.shape[1]} terms), "
                     f"{len(self.rep_idx)} repulsive pairs (σ/r)^{self.rep_power}")
        return "\n".join(lines)
