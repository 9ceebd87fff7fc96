"""Where a CG model was trained: a smooth gate over the CG torsions, from the reference frames.

A force-matched network is fitted only where the reference has frames. Elsewhere it extrapolates, and an
MLP extrapolates linearly: it can dig a deep spurious basin in a torsion region the reference barely
visits, which CG MD then fills (measured on the default ``cgwb run``: a reference with 13 frames in one
CG-torsion region gave a CG model with half its frames there). :class:`TorsionDomain` is the model's
domain of validity: for each CG torsion φ_q a smoothed histogram of the reference,

    f_q(φ) = Σ_j w_qj exp(κ (cos(φ - μ_j) - 1)),   normalised to the fraction of frames per bin,

and the gate ``g(x) = Π_q s((ln f_q - ln lo) / (ln hi - ln lo))`` with the quintic smoothstep s (C², in
[0, 1]): 1 where every torsion lies where the reference has at least ``hi`` of its frames per bin, 0 where
one lies below ``lo``. :class:`cg.potential.CGPotential` uses it as

    U(x) = U_prior(x) + g(x) (U_net(x) - c),

so outside the reference's support the model is its priors (Boltzmann inversion of the same reference)
and the network's extrapolation is switched off. The offset c (a high quantile of U_net over the
reference frames) makes the switch raise, not lower, the energy of the unsupported region relative to the
supported one. The gate reads the torsions as ``(c, s) = sinθ1 sinθ2 (cos φ, sin φ)`` over
``sqrt(c² + s² + ε²)`` so it stays smooth where three beads line up.

Analytic gradients (:meth:`TorsionDomain.gate_grad`) serve the fast MD path; :meth:`TorsionDomain.forward`
is plain torch for autograd, training and TorchScript export. Units: radians; gate dimensionless.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .analytic_forces import _smoothstep5

Tensor = torch.Tensor
_EPS2 = 0.1 ** 2  # ε² of the regularised torsion direction


class TorsionDomain(nn.Module):
    """Smooth gate g(x) ∈ [0, 1]: 1 inside the reference's torsion support, 0 outside (see the module doc).

    Build with :meth:`fit`. ``quads`` (Q, 4) are bead indices of the torsions; ``weights`` (Q, K) kernel
    weights on K evenly spaced centres; ``lo``/``hi`` the fractions of frames per bin where the gate is
    0 and 1; ``offset`` the network-energy offset c (kcal/mol) applied by :class:`cg.potential.CGPotential`.
    """

    def __init__(self, quads: Tensor | np.ndarray, weights: Tensor | np.ndarray, kappa: float, lo: float,
                 hi: float, offset: float = 0.0) -> None:
        super().__init__()
        quads = torch.as_tensor(np.asarray(quads), dtype=torch.long).reshape(-1, 4)
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if weights.shape[0] != len(quads):
            raise ValueError(f"weights has {weights.shape[0]} rows for {len(quads)} torsions")
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
        K = weights.shape[1]
        mu = torch.arange(K, dtype=torch.float64) * (2 * math.pi / K) - math.pi
        self.register_buffer("quads", quads)
        self.register_buffer("weights", weights)
        self.register_buffer("cmu", torch.cos(mu))
        self.register_buffer("smu", torch.sin(mu))
        self.register_buffer("offset", torch.tensor(float(offset), dtype=torch.float64))
        self.kappa, self.lo, self.hi = float(kappa), float(lo), float(hi)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, frames: np.ndarray, quads: np.ndarray, hi: float = 5e-4, ratio: float = 10.0, bins: int = 72,
            width_deg: float = 10.0) -> "TorsionDomain":
        """Gate from reference CG frames (M, n, 3) Å for torsions ``quads`` (Q, 4).

        hi : fraction of the frames per bin (360°/``bins`` wide) above which the network acts fully;
            below ``hi / ratio`` it is off. Default 5e-4 per 5° bin: the network is switched off only where
            the reference's marginal free energy is ≳ 4 kcal/mol (300 K) above a typical basin's.
        width_deg : kernel width (κ = 1/width²).
        """
        from forcefield.errors import InputError

        from .priors import torsion_components

        R = np.asarray(frames, dtype=float)
        q = np.asarray(quads, dtype=int).reshape(-1, 4)
        if R.ndim != 3 or len(R) == 0:
            raise InputError(f"domain of validity needs reference frames (M, n, 3); got shape {R.shape}")
        if not len(q):
            raise InputError("domain of validity needs at least one CG torsion (the bead graph has none)")
        if not (0 < hi < 1 and ratio > 1):
            raise InputError(f"domain gate: need 0 < hi < 1 and ratio > 1, got hi={hi}, ratio={ratio}")
        with torch.no_grad():
            c, s = torsion_components(torch.as_tensor(R), torch.as_tensor(q))
        phi = torch.atan2(s, c).numpy()
        edges = np.linspace(-math.pi, math.pi, bins + 1)
        w = np.stack([np.histogram(phi[:, k], edges)[0] for k in range(len(q))]).astype(float) / len(R)
        # centres at -π + k·2π/K (bin k's lower edge + half a bin is the histogram centre: shift counts by
        # half a bin onto the lattice, splitting each bin's weight between its two nearest centres)
        w = 0.5 * (w + np.roll(w, 1, axis=1))
        kappa = 1.0 / math.radians(width_deg) ** 2
        mu = np.arange(bins) * (2 * math.pi / bins)
        norm = np.exp(kappa * (np.cos(mu) - 1.0)).sum()  # the kernel summed over the lattice: f = bin fraction
        return cls(q, w / norm, kappa, hi / ratio, hi)

    # ------------------------------------------------------------------ evaluation
    def _direction(self, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rho = torch.sqrt(c * c + s * s + _EPS2)
        return c / rho, s / rho, rho

    def fraction(self, c: Tensor, s: Tensor) -> Tensor:
        """Smoothed reference fraction per bin f_q (B, Q) at torsion components (c, s) (B, Q)."""
        dt = c.dtype
        vc, vs, _ = self._direction(c, s)
        cosd = vc[..., None] * self.cmu.to(dt) + vs[..., None] * self.smu.to(dt)
        return (self.weights.to(dt) * torch.exp(self.kappa * (cosd - 1.0))).sum(-1)

    def gate_per_torsion(self, c: Tensor, s: Tensor) -> Tensor:
        """Per-torsion gates (B, Q) in [0, 1]."""
        lf = torch.log(self.fraction(c, s) + 1e-300)
        return _smoothstep5((lf - math.log(self.lo)) / math.log(self.hi / self.lo))[0]

    def forward(self, x: Tensor) -> Tensor:
        """Gate g (B,) of bead positions x (B, n, 3) Å (plain torch: differentiable by autograd)."""
        from .priors import torsion_components

        c, s = torsion_components(x.double(), self.quads)
        return self.gate_per_torsion(c, s).prod(-1).to(x.dtype)

    def gate_grad(self, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gate g (B,) and its derivatives ∂g/∂c, ∂g/∂s (B, Q), analytically (no autograd graph); computed
        in float64 (the kernel tails underflow float32), returned in the dtype of ``c``."""
        out_dt, c, s = c.dtype, c.double(), s.double()
        dt = torch.float64
        vc, vs, rho = self._direction(c, s)
        cmu, smu = self.cmu.to(dt), self.smu.to(dt)
        cosd = vc[..., None] * cmu + vs[..., None] * smu
        wk = self.weights.to(dt) * torch.exp(self.kappa * (cosd - 1.0))       # (B, Q, K)
        f = wk.sum(-1) + 1e-300
        dfc, dfs = self.kappa * (wk * cmu).sum(-1), self.kappa * (wk * smu).sum(-1)  # ∂f/∂(vc, vs)
        span = math.log(self.hi / self.lo)
        gq, dgq = _smoothstep5((torch.log(f) - math.log(self.lo)) / span)
        # product rule without division: the product of the other gates from prefix and suffix products
        one = torch.ones_like(gq[:, :1])
        pre = torch.cumprod(torch.cat([one, gq[:, :-1]], 1), 1)
        suf = torch.flip(torch.cumprod(torch.cat([one, torch.flip(gq[:, 1:], [1])], 1), 1), [1])
        dg_df = pre * suf * dgq / (span * f)
        # v = (c, s)/ρ: ∂vc/∂c = (s² + ε²)/ρ³, ∂vc/∂s = ∂vs/∂c = -cs/ρ³, ∂vs/∂s = (c² + ε²)/ρ³
        r3 = rho ** 3
        a, b = dg_df * dfc, dg_df * dfs
        gc = (a * (s * s + _EPS2) - b * c * s) / r3
        gs = (b * (c * c + _EPS2) - a * c * s) / r3
        return (pre[:, -1] * gq[:, -1]).to(out_dt), gc.to(out_dt), gs.to(out_dt)

    @torch.no_grad()
    def gate_frames(self, frames: np.ndarray | Tensor, batch: int = 8192) -> Tensor:
        """Gates (M,) of frames (M, n, 3) Å, evaluated in batches (float64, on the domain's device)."""
        R = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames, dtype=torch.float64,
                            device=self.weights.device)
        return torch.cat([self(R[i:i + batch]) for i in range(0, len(R), batch)])

    # ------------------------------------------------------------------ files
    def state(self) -> dict[str, Any]:
        return {"quads": self.quads.cpu(), "weights": self.weights.cpu(), "kappa": self.kappa, "lo": self.lo,
                "hi": self.hi, "offset": float(self.offset)}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "TorsionDomain":
        return cls(s["quads"], s["weights"], s["kappa"], s["lo"], s["hi"], s["offset"])


def gate_network(potential, frames: np.ndarray, forces: np.ndarray | None = None, hi: float = 5e-4,
                 quantile: float = 0.99, batch: int = 4096) -> dict[str, float]:
    """Fit a :class:`TorsionDomain` on reference CG frames (M, n, 3) Å and set it on ``potential``.

    The offset c is the ``quantile`` of the network's energy over the frames. Returns figures for the
    model's info: the offset, the fraction of reference frames the gate switches (partly) off, and, with
    ``forces`` (M, n, 3) kcal/mol/Å, the force RMSE over the frames without and with the gate.
    """
    from forcefield.errors import InputError

    from .priors import dihedral_quads

    if potential.net is None:
        raise InputError("a domain gate needs a network to gate (this potential is priors only)")
    q = dihedral_quads(potential.bonds.cpu().numpy())
    dom = TorsionDomain.fit(frames, q, hi=hi)
    dev = potential.masses.device
    R = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
    with torch.no_grad():
        U = torch.cat([potential.net(R[i:i + batch].to(dev)).double().cpu() for i in range(0, len(R), batch)])
    g = dom.gate_frames(R, batch)
    dom.offset.fill_(float(torch.quantile(U, quantile)))
    out = {"domain_offset": float(dom.offset), "domain_frames_gated": float((g < 0.999).double().mean()),
           "domain_frames_outside": float((g < 0.5).double().mean())}
    if forces is not None:
        Fr = torch.as_tensor(np.asarray(forces), dtype=torch.float64)
        err = []
        for d in (None, dom):
            potential.set_domain(d)
            err.append(potential.force_rmse(R, Fr, batch))
        out.update(domain_force_rmse_ungated=err[0], domain_force_rmse_gated=err[1])
    potential.set_domain(dom)
    return out
