"""Conditional VAE for backmapping: CG bead positions -> all-atom positions.

Three networks share one equivariant building block (:class:`EquivariantBlock`, a dense PaiNN-style layer on
the CG graph with scalar and vector channels, plus a cross-product update that makes it sensitive to
handedness, so a chiral centre is placed correctly even when the beads are few):

* **encoder** q(z | AA, CG): the offsets of every atom from its bead are projected on the vector channels of
  a CG network; these projections (rotation invariant) with the atom's identity go through an MLP and are
  summed per bead into the mean and log-variance of an invariant latent per bead;
* **prior** p(z | CG): message passing on the CG graph only, giving a mean and log-variance per bead;
* **decoder**: message passing on the CG graph with the latent added to each bead's scalar features; every
  atom takes a learned invariant combination of its bead's vector channels, plus local coordinates in an
  orthonormal frame per bead built from the CG geometry (shared with the encoder), as its offset.

Offsets are re-centred with the mapping's own weights (mass weights for ``com``, equal weights for ``cog``),
so that mapping the decoded atoms gives back the input beads exactly. Only relative vectors between beads
enter the networks, so rotating or translating the CG input rotates or translates the output exactly.
Atoms in no bead of the mapping are attached to a host bead (the bead of the nearest bonded atom) with zero
weight in the re-centring.

Units: Å. Networks run in float32 by default; every module follows ``.to(device, dtype)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`CGVAE` (stored as JSON with saved models)."""

    n_atoms: int
    n_beads: int
    hidden: int = 64
    latent: int = 16
    layers: int = 3
    enc_layers: int = 2
    n_rbf: int = 16
    rbf_max: float = 12.0
    cutoff: float | None = None  # bead pairs farther apart exchange no messages (None: fully connected)

    def to_dict(self) -> dict:
        return asdict(self)


def _lin(layer: nn.Linear, v: torch.Tensor) -> torch.Tensor:
    """Apply a bias-free linear map over the channel axis of vectors ``v`` (..., F, 3)."""
    return torch.einsum("...fd,gf->...gd", v, layer.weight)


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class RadialBasis(nn.Module):
    """Gaussian radial basis on [0, r_max] Å with an optional cosine cutoff envelope."""

    def __init__(self, n: int, r_max: float, cutoff: float | None) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, r_max, n))
        self.width = (r_max / max(n - 1, 1)) * 1.0
        self.cutoff = cutoff

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        out = torch.exp(-(((d[..., None] - self.centers) / self.width) ** 2))
        if self.cutoff is not None:
            env = 0.5 * (torch.cos(torch.pi * d / self.cutoff) + 1.0) * (d < self.cutoff)
            out = out * env[..., None]
        return out


class EquivariantBlock(nn.Module):
    """One message-passing layer with scalar (B, n, F) and vector (B, n, F, 3) features on a dense graph.

    Messages from bead j to bead i are scalar filters of |x_j - x_i| times invariant functions of j's scalars,
    multiplying j's vectors and the unit vector (x_j - x_i)/|x_j - x_i|. The update mixes vector channels
    linearly, adds their cross products (rotation-equivariant pseudovectors: the layer is SE(3)-, not
    E(3)-equivariant, as molecules are chiral) and feeds vector norms and dot products to the scalars.
    """

    def __init__(self, F: int, n_rbf: int) -> None:
        super().__init__()
        self.F = F
        self.phi = _mlp(F, F, 3 * F)
        self.filt = nn.Linear(n_rbf, 3 * F)
        self.U = nn.Linear(F, F, bias=False)
        self.V = nn.Linear(F, F, bias=False)
        self.X = nn.Linear(F, F, bias=False)
        self.upd = _mlp(2 * F, F, 4 * F)
        self.norm = nn.LayerNorm(F)

    def forward(self, s: torch.Tensor, v: torch.Tensor, unit: torch.Tensor, rbf: torch.Tensor,
                mask: torch.Tensor, agg: float) -> tuple[torch.Tensor, torch.Tensor]:
        F = self.F
        x = self.phi(s)[:, None, :, :] * self.filt(rbf) * mask[..., None]  # (B, i, j, 3F)
        a, b, c = x.split(F, dim=-1)
        s = s + a.sum(2) / agg
        v = v + ((b[..., None] * v[:, None]).sum(2) + (c[..., None] * unit[:, :, :, None, :]).sum(2)) / agg
        Uv, Vv = _lin(self.U, v), _lin(self.V, v)
        Xv = torch.cross(Uv, _lin(self.X, v), dim=-1)
        nv = torch.sqrt((Vv**2).sum(-1) + 1e-8)
        aa, asv, av, ax = self.upd(torch.cat([s, nv], -1)).split(F, dim=-1)
        s = self.norm(s + aa + asv * (Uv * Vv).sum(-1))
        v = v + av[..., None] * Uv + ax[..., None] * Xv
        # equivariant vector norm: divide by the RMS length over channels (an invariant), keeping O(1) scale
        v = v / torch.sqrt((v**2).sum(-1).mean(-1, keepdim=True)[..., None] + 1e-6)
        return s, v


class CGNet(nn.Module):
    """Stack of :class:`EquivariantBlock` on the bead graph; initial scalars given, vectors zero."""

    def __init__(self, cfg: ModelConfig, layers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.rbf = RadialBasis(cfg.n_rbf, cfg.rbf_max, cfg.cutoff)
        self.blocks = nn.ModuleList([EquivariantBlock(cfg.hidden, cfg.n_rbf) for _ in range(layers)])
        self.agg = float(max(cfg.n_beads - 1, 1)) ** 0.5

    def forward(self, X: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, n, _ = X.shape
        rel = X[:, None, :, :] - X[:, :, None, :]  # rel[b, i, j] = x_j - x_i
        d = torch.sqrt((rel**2).sum(-1) + 1e-12)
        unit = rel / d[..., None]
        mask = 1.0 - torch.eye(n, dtype=X.dtype, device=X.device)
        if self.cfg.cutoff is not None:
            mask = mask * (d < self.cfg.cutoff).to(X.dtype)
        else:
            mask = mask.expand(B, n, n)
        rbf = self.rbf(d)
        v = torch.zeros(B, n, self.cfg.hidden, 3, dtype=X.dtype, device=X.device)
        for blk in self.blocks:
            s, v = blk(s, v, unit, rbf, mask, self.agg)
        return s, v


class CGVAE(nn.Module):
    """Conditional VAE placing the N atoms of one molecule around its n beads.

    Parameters
    ----------
    cfg : sizes and hyper-parameters.
    host : (N,) bead of every atom (for atoms in no bead: the bead they are attached to).
    weights : (N,) re-centring weight of every atom inside its bead (rows of the mapping matrix; 0 for
        atoms in no bead). Decoded positions satisfy ``sum_a weights[a] * R[a] = X[host]`` per bead.
    """

    def __init__(self, cfg: ModelConfig, host: np.ndarray, weights: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        F, L = cfg.hidden, cfg.latent
        host = torch.as_tensor(np.asarray(host), dtype=torch.long)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=torch.float32)
        onehot = torch.zeros(cfg.n_atoms, cfg.n_beads)
        onehot[torch.arange(cfg.n_atoms), host] = 1.0
        self.register_buffer("host", host)
        self.register_buffer("weights", w)
        self.register_buffer("onehot", onehot)
        self.atom_emb = nn.Embedding(cfg.n_atoms, F)
        nn.init.normal_(self.atom_emb.weight, std=0.1)  # small: frame-to-frame features dominate at the start
        self.bead_emb = nn.ModuleDict({k: nn.Embedding(cfg.n_beads, F) for k in ("enc", "prior", "dec")})
        self.enc_net = CGNet(cfg, cfg.enc_layers)
        self.prior_net = CGNet(cfg, cfg.enc_layers)
        self.dec_net = CGNet(cfg, cfg.layers)
        self.enc_proj = nn.Linear(F, F, bias=False)
        nn.init.orthogonal_(self.enc_proj.weight)
        self.enc_rbf = RadialBasis(cfg.n_rbf, 4.0, None)
        self.enc_atom = _mlp(3 * F + 3 + cfg.n_rbf, F, F)
        self.enc_out = nn.Sequential(nn.LayerNorm(2 * F), _mlp(2 * F, F, 2 * L))
        self.prior_out = _mlp(F, F, 2 * L)
        self.z_in = nn.Linear(L, F)
        self.dec_coef = _mlp(2 * F + L, F, F)
        self.dec_local = _mlp(2 * F + L, F, 3)
        # per-atom linear paths between local coordinates and the bead latent (a PCA-like autoencoder that
        # trains in a few steps; the networks above add the non-linear parts)
        self.enc_lin = nn.Parameter(torch.randn(cfg.n_atoms, L, 3) / np.sqrt(3.0 * np.bincount(host.numpy(), minlength=cfg.n_beads).max()))
        self.dec_lin = nn.Parameter(torch.randn(cfg.n_atoms, 3, L) * (0.1 / np.sqrt(L)))
        # start the posterior narrow (std ~0.05): the latent then carries information from the first step,
        # which keeps the decoder from learning to ignore it (posterior collapse)
        # and the posterior means spread widely from the start, which shortens the plateau before the decoder
        # starts reading the latent
        with torch.no_grad():
            self.enc_out[-1][-1].bias[L:] = -6.0
            self.enc_out[-1][-1].weight[:L] *= 10.0

    # ------------------------------------------------------------------ pieces
    def _bead_init(self, key: str, B: int) -> torch.Tensor:
        return self.bead_emb[key].weight[None].expand(B, -1, -1)

    def cg_frames(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bead scalars (B, n, F), vectors (B, n, F, 3) and a right-handed orthonormal frame per bead
        (B, n, 3, 3) from the CG geometry alone.

        The frame comes from two learned vector channels by Gram-Schmidt; it is shared by the encoder
        (atom offsets expressed in it are invariant, complete and sensitive to handedness) and the decoder
        (which places atoms by local coordinates in it), so the autoencoder's task is nearly an identity.
        It needs three or more non-collinear beads; for fewer, the vector-channel term of the decoder
        still places atoms equivariantly.
        """
        s, v = self.enc_net(X, self._bead_init("enc", X.shape[0]))
        pv = _lin(self.enc_proj, v)
        e1 = pv[:, :, 0] / torch.sqrt((pv[:, :, 0] ** 2).sum(-1, keepdim=True) + 1e-8)
        b = pv[:, :, 1] - (pv[:, :, 1] * e1).sum(-1, keepdim=True) * e1
        e2 = b / torch.sqrt((b**2).sum(-1, keepdim=True) + 1e-8)
        return s, pv, torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], -2)

    def encode(self, R: torch.Tensor, X: torch.Tensor, frames: tuple | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, n, L) of atoms R (B, N, 3) around beads X (B, n, 3)."""
        B = X.shape[0]
        s, pv, frame = self.cg_frames(X) if frames is None else frames
        off = R - X[:, self.host]
        proj = torch.einsum("bafd,bad->baf", pv[:, self.host], off)
        local = torch.einsum("baed,bad->bae", frame[:, self.host], off)
        dist = torch.sqrt((off**2).sum(-1) + 1e-12)
        feat = torch.cat([proj, local, s[:, self.host], self.atom_emb.weight[None].expand(B, -1, -1),
                          self.enc_rbf(dist)], -1)
        h = torch.einsum("an,baf->bnf", self.onehot, self.enc_atom(feat))
        mu, logvar = self.enc_out(torch.cat([h, s], -1)).chunk(2, -1)
        mu = mu + torch.einsum("an,ale,bae->bnl", self.onehot, self.enc_lin, local)
        return mu, logvar.clamp(-12.0, 6.0)

    def prior(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and log-variance (B, n, L) given beads X (B, n, 3)."""
        s, _ = self.prior_net(X, self._bead_init("prior", X.shape[0]))
        mu, logvar = self.prior_out(s).chunk(2, -1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(self, X: torch.Tensor, z: torch.Tensor, frames: tuple | None = None) -> torch.Tensor:
        """Atom positions (B, N, 3) from beads X (B, n, 3) and latents z (B, n, L)."""
        B = X.shape[0]
        frame = (self.cg_frames(X) if frames is None else frames)[2]
        s, v = self.dec_net(X, self._bead_init("dec", B) + self.z_in(z))
        inp = torch.cat([s[:, self.host], z[:, self.host], self.atom_emb.weight[None].expand(B, -1, -1)], -1)
        off = torch.einsum("baf,bafd->bad", self.dec_coef(inp), v[:, self.host])
        loc = self.dec_local(inp) + torch.einsum("ael,bal->bae", self.dec_lin, z[:, self.host])
        off = off + torch.einsum("bae,baed->bad", loc, frame[:, self.host])
        # mapping-aware re-centring: the weighted mean offset of each bead's atoms is removed
        mean = torch.einsum("an,bad->bnd", self.onehot * self.weights[:, None], off)
        off = off - mean[:, self.host]
        return X[:, self.host] + off

    # ------------------------------------------------------------------ whole model
    def forward(self, R: torch.Tensor, X: torch.Tensor, deterministic: bool = False,
                prior_sample: bool = False) -> dict[str, torch.Tensor]:
        """Training pass: encode, sample the posterior (reparametrised; its mean if ``deterministic``), decode;
        with ``prior_sample`` also decode one draw from the prior (``"R_prior"``)."""
        frames = self.cg_frames(X)
        mu_q, lv_q = self.encode(R, X, frames)
        mu_p, lv_p = self.prior(X)
        z = mu_q if deterministic else mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * lv_q)
        out = {"R": self.decode(X, z, frames), "mu_q": mu_q, "lv_q": lv_q, "mu_p": mu_p, "lv_p": lv_p}
        if prior_sample:
            # a draw from the (detached) prior, decoded: its bonded geometry is trained too, so that samples
            # are chemically valid and not only posterior reconstructions
            zp = (mu_p + torch.randn_like(mu_p) * torch.exp(0.5 * lv_p)).detach()
            out["R_prior"] = self.decode(X, zp, frames)
        return out

    @torch.no_grad()
    def reconstruct(self, R: torch.Tensor, X: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Decode the posterior of the true atoms (its mean, or one draw with ``sample=True``)."""
        frames = self.cg_frames(X)
        mu, lv = self.encode(R, X, frames)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * lv) if sample else mu
        return self.decode(X, z, frames)

    @torch.no_grad()
    def sample(self, X: torch.Tensor, n_samples: int = 1, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws (B, n_samples, N, 3) from the prior given beads X (B, n, 3); ``temperature`` scales the std."""
        B = X.shape[0]
        mu, lv = self.prior(X)
        Xs = X[:, None].expand(B, n_samples, *X.shape[1:]).reshape(B * n_samples, *X.shape[1:])
        mu = mu[:, None].expand(B, n_samples, *mu.shape[1:]).reshape(B * n_samples, *mu.shape[1:])
        lv = lv[:, None].expand(B, n_samples, *lv.shape[1:]).reshape(B * n_samples, *lv.shape[1:])
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu").to(mu.device)
        z = mu + temperature * eps * torch.exp(0.5 * lv)
        return self.decode(Xs, z).reshape(B, n_samples, self.cfg.n_atoms, 3)
