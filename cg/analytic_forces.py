"""Analytic energies and forces of the CG priors and of :class:`cg.potential.FeatureNet`, without autograd.

The MD engine (:mod:`cg.md`) calls these every step: no autograd graph is built, so a step costs a fixed
handful of tensor operations whatever the batch (all replicas at once). Each routine returns energies
(B,) in kcal/mol and forces (B, n, 3) in kcal/mol/Å for positions (B, n, 3) in Å, and agrees with
``-∂U/∂x`` by autograd to float rounding (tests/test_cg_md_fast.py).

Geometry (written here from the vector identities):

* bond r = |x_j - x_i|, ∂r/∂x_j = û.
* angle θ at j between a = x_i - x_j and b = x_k - x_j: ∂θ/∂a = (cosθ â - b̂)/(|a| sinθ).
* torsion i-j-k-l with unit bond vectors u0, u1, u2: ``c = (u0·u1)(u1·u2) - u0·u2`` (= sinθ1 sinθ2 cosφ)
  and ``s = det(u0, u1, u2)`` (= sinθ1 sinθ2 sinφ); both are polynomials in the u's, and a gradient with
  respect to a unit vector u = e/|e| is taken to e by the projection (I - u uᵀ)/|e|.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- geometry with gradients
def _add(G: Tensor, idx: Tensor, g: Tensor) -> None:
    """G[:, idx] += g with repeated indices accumulated (G (B, n, 3), idx (T,), g (B, T, 3))."""
    G.index_add_(1, idx, g)


def bonds_fwd(x: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """Lengths r (B, P) and unit vectors û (B, P, 3) from bead pairs[:, 0] to pairs[:, 1]."""
    e = x[:, pairs[:, 1]] - x[:, pairs[:, 0]]
    r = torch.linalg.vector_norm(e, dim=-1)
    return r, e / r[..., None]


def bonds_bwd(G: Tensor, pairs: Tensor, u: Tensor, dU_dr: Tensor) -> None:
    """Accumulate ∂U/∂x into G for ∂U/∂r (B, P)."""
    g = dU_dr[..., None] * u
    _add(G, pairs[:, 1], g)
    _add(G, pairs[:, 0], -g)


def angles_fwd(x: Tensor, triples: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Angles θ (B, T) at the middle bead (atan2 form, as :func:`cg.priors.bond_angles`) and saved terms."""
    a = x[:, triples[:, 0]] - x[:, triples[:, 1]]
    b = x[:, triples[:, 2]] - x[:, triples[:, 1]]
    la, lb = torch.linalg.vector_norm(a, dim=-1), torch.linalg.vector_norm(b, dim=-1)
    ah, bh = a / la[..., None], b / lb[..., None]
    cos = (ah * bh).sum(-1)
    sin = torch.linalg.vector_norm(torch.linalg.cross(ah, bh), dim=-1)
    return torch.atan2(sin, cos), (ah, bh, la, lb, cos, sin)


def angles_bwd(G: Tensor, triples: Tensor, saved: tuple[Tensor, ...], dU_dth: Tensor) -> None:
    ah, bh, la, lb, cos, sin = saved
    f = dU_dth / sin.clamp_min(1e-12)
    ga = (f / la)[..., None] * (cos[..., None] * ah - bh)
    gb = (f / lb)[..., None] * (cos[..., None] * bh - ah)
    _add(G, triples[:, 0], ga)
    _add(G, triples[:, 2], gb)
    _add(G, triples[:, 1], -(ga + gb))


def cos_angles_bwd(G: Tensor, triples: Tensor, saved: tuple[Tensor, ...], dU_dcos: Tensor) -> None:
    """Accumulate the gradient of U through cos θ (∂cosθ/∂a = (b̂ - cosθ â)/|a|)."""
    ah, bh, la, lb, cos, _ = saved
    ga = (dU_dcos / la)[..., None] * (bh - cos[..., None] * ah)
    gb = (dU_dcos / lb)[..., None] * (ah - cos[..., None] * bh)
    _add(G, triples[:, 0], ga)
    _add(G, triples[:, 2], gb)
    _add(G, triples[:, 1], -(ga + gb))


def torsion_fwd(x: Tensor, quads: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """``c = sinθ1 sinθ2 cosφ`` and ``s = sinθ1 sinθ2 sinφ`` (B, Q), as :func:`cg.priors.torsion_components`."""
    e = [x[:, quads[:, k + 1]] - x[:, quads[:, k]] for k in range(3)]
    ln = [torch.linalg.vector_norm(v, dim=-1) for v in e]
    u0, u1, u2 = (v / n[..., None] for v, n in zip(e, ln))
    d01, d12, d02 = (u0 * u1).sum(-1), (u1 * u2).sum(-1), (u0 * u2).sum(-1)
    x12 = torch.linalg.cross(u1, u2)
    c = d01 * d12 - d02
    s = (u0 * x12).sum(-1)
    return c, s, (u0, u1, u2, ln, d01, d12, x12)


def torsion_bwd(G: Tensor, quads: Tensor, saved: tuple[Tensor, ...], dU_dc: Tensor, dU_ds: Tensor) -> None:
    u0, u1, u2, ln, d01, d12, x12 = saved
    gc, gs = dU_dc[..., None], dU_ds[..., None]
    # ∂c/∂u0 = (u1·u2) u1 - u2, ∂c/∂u1 = (u1·u2) u0 + (u0·u1) u2, ∂c/∂u2 = (u0·u1) u1 - u0
    # ∂s/∂u0 = u1 × u2,        ∂s/∂u1 = u2 × u0,                  ∂s/∂u2 = u0 × u1
    g0 = gc * (d12[..., None] * u1 - u2) + gs * x12
    g1 = gc * (d12[..., None] * u0 + d01[..., None] * u2) + gs * torch.linalg.cross(u2, u0)
    g2 = gc * (d01[..., None] * u1 - u0) + gs * torch.linalg.cross(u0, u1)
    for k, (g, u) in enumerate(((g0, u0), (g1, u1), (g2, u2))):
        ge = (g - (g * u).sum(-1, keepdim=True) * u) / ln[k][..., None]
        _add(G, quads[:, k + 1], ge)
        _add(G, quads[:, k], -ge)


# ----------------------------------------------------------------------------- priors
def _fourier(phi: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U(φ) = Σ_n a_n cos nφ + b_n sin nφ and dU/dφ, for torsions φ (..., k) and coefficients (k, n)."""
    n = torch.arange(1, a.shape[-1] + 1, device=phi.device, dtype=phi.dtype)
    ang = phi[..., None] * n
    ca, sa = torch.cos(ang), torch.sin(ang)
    return (a * ca + b * sa).sum(-1), (n * (b * ca - a * sa)).sum(-1)


def _smoothstep5(t: Tensor) -> tuple[Tensor, Tensor]:
    """s(t) = t³(10 - 15t + 6t²) on t clamped to [0, 1], and s'(t) (zero outside (0, 1))."""
    t = t.clamp(0.0, 1.0)
    return t ** 3 * (10.0 - 15.0 * t + 6.0 * t * t), 30.0 * t * t * (1.0 - t) ** 2


def prior_energy_forces(p, x: Tensor, start_deg: float = 155.0, end_deg: float = 178.0,
                        rep: tuple[Tensor, Tensor] | None = None, rep_cutoff: float | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Energies (B,) and forces (B, n, 3) of a :class:`cg.priors.Priors` ``p`` (same terms as ``p.terms``).

    ``rep`` : (pairs, σ) replacing the repulsive pairs (a neighbour list, :class:`cg.md.RepulsionNeighbours`);
    ``rep_cutoff`` : Å, repulsive pairs farther apart contribute nothing (``U(r_c) = kT (σ/r_c)^p`` is the
    largest term dropped). Both None: every pair, exactly.
    """
    dt = x.dtype
    G = torch.zeros_like(x)
    E = torch.zeros(x.shape[0], dtype=dt, device=x.device)
    if len(p.bond_idx):
        r, u = bonds_fwd(x, p.bond_idx)
        k, r0 = p.bond_k.to(dt), p.bond_r0.to(dt)
        dr = r - r0
        E = E + (0.5 * k * dr * dr).sum(-1)
        bonds_bwd(G, p.bond_idx, u, k * dr)
    if len(p.angle_idx):
        th, sv = angles_fwd(x, p.angle_idx)
        k, t0 = p.angle_k.to(dt), p.angle_t0.to(dt)
        dth = th - t0
        E = E + (0.5 * k * dth * dth).sum(-1)
        angles_bwd(G, p.angle_idx, sv, k * dth)
    if len(p.dih_idx):
        q = p.dih_idx
        c, s, sv = torsion_fwd(x, q)
        uphi, du = _fourier(torch.atan2(s, c), p.dih_a.to(dt), p.dih_b.to(dt))
        if p.damp_collinear:
            lo, hi = math.radians(start_deg), math.radians(end_deg)
            th1, sv1 = angles_fwd(x, q[:, :3])
            th2, sv2 = angles_fwd(x, q[:, 1:])
            s1, ds1 = _smoothstep5((th1 - lo) / (hi - lo))
            s2, ds2 = _smoothstep5((th2 - lo) / (hi - lo))
            D = (1.0 - s1) * (1.0 - s2)
            angles_bwd(G, q[:, :3], sv1, -uphi * ds1 / (hi - lo) * (1.0 - s2))
            angles_bwd(G, q[:, 1:], sv2, -uphi * ds2 / (hi - lo) * (1.0 - s1))
        else:
            D = torch.ones_like(uphi)
        rho2 = (c * c + s * s).clamp_min(1e-30)
        f = du * D / rho2  # dU/dφ over ρ²; dφ/dc = -s/ρ², dφ/ds = c/ρ²
        torsion_bwd(G, q, sv, -f * s, f * c)
        E = E + (uphi * D).sum(-1)
    pairs, sigma = (p.rep_idx, p.rep_sigma) if rep is None else rep
    if pairs.dim() == 2 and pairs.shape[1] == 3:  # per-replica list: rows (replica, i, j)
        Er, Fr = _repulsion_per_replica(x, pairs, sigma, 0.0019872041 * p.temperature, p.rep_power, rep_cutoff)
        return E + Er, -G + Fr
    if len(pairs):
        r, u = bonds_fwd(x, pairs)
        kT = 0.0019872041 * p.temperature
        up = kT * (sigma.to(dt) / r) ** p.rep_power
        if rep_cutoff is not None:
            up = torch.where(r < rep_cutoff, up, torch.zeros_like(up))
        E = E + up.sum(-1)
        bonds_bwd(G, pairs, u, -p.rep_power * up / r)
    return E, -G


def _repulsion_per_replica(x: Tensor, rows: Tensor, sigma: Tensor, kT: float, power: int,
                           cutoff: float | None) -> tuple[Tensor, Tensor]:
    """``kT (σ/r)^p`` over per-replica pair rows (replica, i, j) with their σ: energies (B,), forces (B, n, 3)."""
    B, n, _ = x.shape
    xf = x.reshape(B * n, 3)
    fi, fj = rows[:, 0] * n + rows[:, 1], rows[:, 0] * n + rows[:, 2]
    e = xf[fj] - xf[fi]
    r = torch.linalg.vector_norm(e, dim=-1)
    up = kT * (sigma.to(x.dtype) / r) ** power
    if cutoff is not None:
        up = torch.where(r < cutoff, up, torch.zeros_like(up))
    E = x.new_zeros(B).index_add_(0, rows[:, 0], up)
    g = (-power * up / (r * r))[:, None] * e  # ∂U/∂x_j
    F = torch.zeros_like(xf).index_add_(0, fj, -g).index_add_(0, fi, g)
    return E, F.view(B, n, 3)


# ----------------------------------------------------------------------------- FeatureNet
def mlp_supported(mlp: nn.Module) -> bool:
    """True when the MLP is a Sequential of Linear and SiLU layers only (the analytic backward covers it)."""
    return isinstance(mlp, nn.Sequential) and all(isinstance(m, (nn.Linear, nn.SiLU)) for m in mlp)


def _mlp_energy_grad(mlp: nn.Sequential, f: Tensor) -> tuple[Tensor, Tensor]:
    """Output (B,) of the MLP and its gradient (B, F) with respect to the input f (B, F)."""
    saved, h = [], f
    for m in mlp:
        if isinstance(m, nn.Linear):
            saved.append(m)
            h = torch.nn.functional.linear(h, m.weight, m.bias)
        else:
            sg = torch.sigmoid(h)
            saved.append((h, sg))
            h = h * sg
    g = None
    for m in reversed(saved):
        if isinstance(m, nn.Linear):
            g = m.weight.expand(h.shape[0], -1, -1)[:, 0] if g is None else g @ m.weight
        else:
            z, sg = m
            g = g * (sg * (1.0 + z * (1.0 - sg)))
    return h.squeeze(-1), g


def feature_net_energy_forces(net, x: Tensor) -> tuple[Tensor, Tensor]:
    """Energies (B,) and forces (B, n, 3) of a :class:`cg.potential.FeatureNet` (in the net's dtype)."""
    x = x.to(net.mean.dtype)
    npair, ntri, nq = len(net.pairs), len(net.triples), len(net.quads)
    r, u = bonds_fwd(x, net.pairs)
    parts = [r]
    if ntri:
        _, sva = angles_fwd(x, net.triples)
        parts.append(sva[4])
    smooth = net.config["torsions"] == "smooth"
    if nq:
        c, s, svt = torsion_fwd(x, net.quads)
        if smooth:
            parts += [c, s]
        else:
            rho = torch.sqrt(c * c + s * s)
            parts += [c / rho, s / rho]
    f = torch.cat(parts, -1)
    E, gf = _mlp_energy_grad(net.mlp, (f - net.mean) / net.std)
    gf = gf / net.std
    G = torch.zeros_like(x)
    bonds_bwd(G, net.pairs, u, gf[:, :npair])
    if ntri:
        cos_angles_bwd(G, net.triples, sva, gf[:, npair:npair + ntri])
    if nq:
        gc, gs = gf[:, npair + ntri:npair + ntri + nq], gf[:, npair + ntri + nq:]
        if not smooth:  # (c/ρ, s/ρ): d(c/ρ) = s(s dc - c ds)/ρ³, d(s/ρ) = c(c ds - s dc)/ρ³
            r3 = rho ** 3
            gc, gs = (gc * s * s - gs * s * c) / r3, (gs * c * c - gc * s * c) / r3
        torsion_bwd(G, net.quads, svt, gc, gs)
    return E, -G


# ----------------------------------------------------------------------------- fused evaluation for MD
class FusedForces:
    """Priors + FeatureNet forces with every geometric quantity computed once per step, for MD.

    The bond lengths of the prior bonds, the repulsive pairs and the network's pair features go through one
    gather; likewise every angle (prior angles, the torsion-damping angles, the network's angle features)
    and every torsion (prior dihedrals, the network's torsion features); their gradients are accumulated in
    one pass per kind. Same values as :meth:`cg.potential.CGPotential.fast_energy_forces`, in about half
    the tensor operations (what a step of a small system costs). The network runs in the positions' dtype.

    Build with :meth:`for_potential`, which returns None when the potential has parts this does not cover
    (a network other than a Linear/SiLU FeatureNet): then use the general fast path.
    """

    def __init__(self, priors, net, start_deg: float = 155.0, end_deg: float = 178.0, domain=None) -> None:
        p = priors
        self.p, self.net = p, net
        z2, z3, z4 = (torch.zeros(0, k, dtype=torch.long, device=p.bond_idx.device) for k in (2, 3, 4))
        self.nb, self.nr = len(p.bond_idx), len(p.rep_idx)
        self.na, self.nd = len(p.angle_idx), len(p.dih_idx)
        self.damp = bool(p.damp_collinear) and self.nd > 0
        self.lo, self.hi = math.radians(start_deg), math.radians(end_deg)
        fp = net.pairs if net is not None else z2
        ft = net.triples if net is not None else z3
        fq = net.quads if net is not None else z4
        self.domain = domain if net is not None else None
        gq = self.domain.quads if self.domain is not None else z4
        self.nfp, self.nft, self.nfq = len(fp), len(ft), len(fq)
        self.pairs = torch.cat([p.bond_idx, p.rep_idx, fp])
        dq = p.dih_idx
        damp_t = torch.cat([dq[:, :3], dq[:, 1:]]) if self.damp else z3
        self.triples = torch.cat([p.angle_idx, damp_t, ft])
        self.quads = torch.cat([dq, fq, gq])
        self.smooth = net is None or net.config["torsions"] == "smooth"
        self.kT = 0.0019872041 * p.temperature

    @classmethod
    def for_potential(cls, potential) -> "FusedForces | None":
        from .potential import FeatureNet

        net = potential.net
        if potential.priors is None:
            return None
        if net is not None and not (type(net) is FeatureNet and mlp_supported(net.mlp)):
            return None
        return cls(potential.priors, net, domain=potential.domain)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p, dt = self.p, x.dtype
        nb, nr, na, nd = self.nb, self.nr, self.na, self.nd
        E = x.new_zeros(x.shape[0])
        r, u = bonds_fwd(x, self.pairs)
        th, sva = angles_fwd(x, self.triples)
        c, s, svt = torsion_fwd(x, self.quads)
        gr, gth, gc, gs = [], [], [], []  # ∂U/∂(r, θ, c, s), in the order of the index lists
        rb = r[:, :nb]
        dr = rb - p.bond_r0.to(dt)
        kb = p.bond_k.to(dt)
        E = E + (0.5 * kb * dr * dr).sum(-1)
        gr.append(kb * dr)
        if nr:
            rr = r[:, nb:nb + nr]
            up = self.kT * (p.rep_sigma.to(dt) / rr) ** p.rep_power
            E = E + up.sum(-1)
            gr.append(-p.rep_power * up / rr)
        dth = th[:, :na] - p.angle_t0.to(dt)
        ka = p.angle_k.to(dt)
        E = E + (0.5 * ka * dth * dth).sum(-1)
        gth.append(ka * dth)
        if nd:
            cd, sd = c[:, :nd], s[:, :nd]
            uphi, du = _fourier(torch.atan2(sd, cd), p.dih_a.to(dt), p.dih_b.to(dt))
            if self.damp:
                w = self.hi - self.lo
                s12, ds12 = _smoothstep5((th[:, na:na + 2 * nd] - self.lo) / w)
                one = 1.0 - s12
                D = one[:, :nd] * one[:, nd:]
                gth.append(-uphi.repeat(1, 2) * ds12 / w * torch.cat([one[:, nd:], one[:, :nd]], 1))
            else:
                D = torch.ones_like(uphi)
            f = du * D / (cd * cd + sd * sd).clamp_min(1e-30)
            gc.append(-f * sd)
            gs.append(f * cd)
            E = E + (uphi * D).sum(-1)
        if self.net is not None:
            net = self.net
            t0 = na + (2 * nd if self.damp else 0)
            cf, sf = c[:, nd:nd + self.nfq], s[:, nd:nd + self.nfq]
            parts = [r[:, nb + nr:], sva[4][:, t0:]]
            if self.smooth:
                parts += [cf, sf]
            else:
                rho = torch.sqrt(cf * cf + sf * sf)
                parts += [cf / rho, sf / rho]
            mean, std = net.mean.to(dt), net.std.to(dt)
            En, g = _mlp_energy_grad(self.mlp_of(dt), (torch.cat(parts, -1) - mean) / std)
            g = g / std
            if self.domain is not None:  # U = gate (U_net - offset): scale the net's gradient, add the gate's
                cg_, sg_ = c[:, nd + self.nfq:], s[:, nd + self.nfq:]
                gate, ggc, ggs = self.domain.gate_grad(cg_, sg_)
                En = En - self.domain.offset.to(dt)
                g = g * gate[:, None]
                gate_c, gate_s = ggc * En[:, None], ggs * En[:, None]
                En = gate * En
            E = E + En
            k = self.nfp
            gr.append(g[:, :k])
            gth.append(-g[:, k:k + self.nft] * sva[5][:, t0:])  # ∂U/∂θ = ∂U/∂cosθ · (-sinθ)
            k += self.nft
            gcf, gsf = g[:, k:k + self.nfq], g[:, k + self.nfq:]
            if not self.smooth:
                r3 = rho ** 3
                gcf, gsf = (gcf * sf * sf - gsf * sf * cf) / r3, (gsf * cf * cf - gcf * sf * cf) / r3
            gc.append(gcf)
            gs.append(gsf)
            if self.domain is not None:
                gc.append(gate_c)
                gs.append(gate_s)
        G = torch.zeros_like(x)
        bonds_bwd(G, self.pairs, u, torch.cat(gr, 1))
        angles_bwd(G, self.triples, sva, torch.cat(gth, 1))
        if gc:
            torsion_bwd(G, self.quads, svt, torch.cat(gc, 1), torch.cat(gs, 1))
        return E, -G

    def mlp_of(self, dtype: torch.dtype) -> nn.Sequential:
        """The network's MLP in ``dtype`` (a cached copy when that differs from the network's own)."""
        cache = self.__dict__.setdefault("_mlp", {})
        if dtype not in cache:
            m = self.net.mlp
            cache[dtype] = m if next(m.parameters()).dtype == dtype else copy.deepcopy(m).to(dtype)
        return cache[dtype]
