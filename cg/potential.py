"""Neural CG potential: a SchNet-style invariant message-passing network over beads, plus priors.

Total energy ``U(x) = U_prior(x) + U_net(x)`` in kcal/mol for bead positions x (B, n, 3) in Å; forces
are ``-∂U/∂x`` by autograd (kcal/mol/Å). The network sees only interbead distances, so its energy is
invariant to rotations, translations and permutations of equal-type beads. Chirality enters through the
Fourier dihedral priors (dihedrals change sign under reflection).

A second, cheaper network, :class:`FeatureNet`, is an MLP over standardised internal coordinates
(distances, bonded angles, torsion cosines and sines), as in CGnet.

Network (continuous-filter convolutions, Schütt et al. 2018, written here from the paper): bead-type
embeddings; Gaussian radial basis with a cosine cutoff; ``n_interactions`` residual interaction blocks;
per-bead MLP summed to the energy. Messages are aggregated with ``Tensor.index_add_`` over
a flattened (batch × bead) index, so the same code runs on CPU and GPU (``device=``). The network runs in
float32; positions of any dtype are accepted and results returned in that dtype.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .priors import Priors

if TYPE_CHECKING:
    from .domain import TorsionDomain


class RadialBasis(nn.Module):
    """Gaussians on [0, cutoff] times a cosine cutoff envelope (smooth to second order at the cutoff)."""

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("mu", torch.linspace(0.0, cutoff, n_rbf))
        self.gamma = 0.5 / (cutoff / (n_rbf - 1)) ** 2

    def forward(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        env = 0.5 * (torch.cos(math.pi * d.clamp(max=self.cutoff) / self.cutoff) + 1.0)
        return torch.exp(-self.gamma * (d[..., None] - self.mu) ** 2), env


class Interaction(nn.Module):
    """Continuous-filter convolution: filters are computed once per unordered pair and used both ways."""

    def __init__(self, hidden: int, n_rbf: int) -> None:
        super().__init__()
        self.filt = nn.Sequential(nn.Linear(n_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.pre = nn.Linear(hidden, hidden, bias=False)
        self.post = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, rbf: torch.Tensor, env: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        B, n, H = h.shape
        W = self.filt(rbf) * env[..., None]                     # (B, P, H), one filter per unordered pair
        W = torch.cat([W, W], 1)                                # both directions: edges (src->dst), (dst->src)
        s2, d2 = torch.cat([src, dst]), torch.cat([dst, src])
        msg = self.pre(h)[:, s2] * W                            # (B, 2P, H)
        off = (torch.arange(B, device=h.device) * n)[:, None]
        agg = msg.new_zeros(B * n, H).index_add_(0, (d2[None] + off).reshape(-1), msg.reshape(-1, H))
        return h + self.post(agg.view(B, n, H))


class SchNetCG(nn.Module):
    """Invariant message-passing energy over n beads with bead types.

    Parameters
    ----------
    types : (n,) integer bead types (0 .. n_types-1); beads of one type share an embedding.
    hidden, n_rbf, n_interactions : widths and depth.
    cutoff : Å; pairs farther apart exchange no messages (smooth cosine envelope).
    exclude : optional (P, 2) bead pairs that exchange no messages (e.g. bonds already handled by priors);
        default: all pairs interact.
    """

    def __init__(self, types: np.ndarray | torch.Tensor, hidden: int = 32, n_rbf: int = 16, n_interactions: int = 2,
                 cutoff: float = 10.0, exclude: np.ndarray | None = None) -> None:
        super().__init__()
        types = torch.as_tensor(np.asarray(types), dtype=torch.long)
        n = len(types)
        self.config = {"hidden": hidden, "n_rbf": n_rbf, "n_interactions": n_interactions, "cutoff": float(cutoff),
                       "n_types": int(types.max()) + 1,
                       "exclude": None if exclude is None else np.asarray(exclude, dtype=int).tolist()}
        self.register_buffer("types", types)
        excl = {tuple(sorted(p)) for p in (np.asarray(exclude, dtype=int).reshape(-1, 2).tolist() if exclude is not None else [])}
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in excl]
        e = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        self.register_buffer("src", e[:, 0].contiguous())
        self.register_buffer("dst", e[:, 1].contiguous())
        self.embed = nn.Embedding(self.config["n_types"], hidden)
        self.rbf = RadialBasis(n_rbf, cutoff)
        self.blocks = nn.ModuleList([Interaction(hidden, n_rbf) for _ in range(n_interactions)])
        self.out = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, 1))
        with torch.no_grad():  # start close to zero: the priors carry the initial physics
            self.out[-1].weight.mul_(0.1)
            self.out[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies (B,) in kcal/mol of positions x (B, n, 3) in Å (computed in the module's dtype)."""
        dt = self.embed.weight.dtype
        x = x.to(dt)
        d = (x[:, self.dst] - x[:, self.src]).norm(dim=-1)      # (B, E)
        rbf, env = self.rbf(d)
        h = self.embed(self.types)[None].expand(x.shape[0], -1, -1)
        for blk in self.blocks:
            h = blk(h, rbf, env, self.src, self.dst)
        return self.out(h).squeeze(-1).sum(-1)


class FeatureNet(nn.Module):
    """Energy MLP over invariant internal features (CGnet-style, Wang et al. 2019, written here from the paper).

    Features: every interbead distance, the cosine of every bonded angle, and for every bonded torsion
    ``sin θ1 sin θ2 (cos φ, sin φ)`` (:func:`cg.priors.torsion_components`: smooth even where three beads
    line up and φ is undefined, so the forces stay bounded there), standardised with reference statistics
    (``reference`` frames; otherwise unscaled). The energy is invariant to rotations and translations; the
    signed torsion component makes it chiral (it can tell L from D). ``torsions="angle"`` uses plain
    ``cos φ, sin φ`` (the form of potentials saved before the smooth one existed).
    Dense matmuls only, so it is far cheaper per frame than message passing on a CPU.

    Parameters
    ----------
    n_beads, bonds : system size and bead bond graph (angles and torsions follow from it).
    hidden, layers : MLP width and number of hidden layers (SiLU).
    reference : optional (M, n, 3) frames for feature means and standard deviations.
    """

    def __init__(self, n_beads: int, bonds: np.ndarray, hidden: int = 128, layers: int = 3,
                 reference: np.ndarray | None = None, torsions: str = "smooth") -> None:
        super().__init__()
        from .priors import angle_triples, dihedral_quads

        b = np.asarray(bonds, dtype=int).reshape(-1, 2)
        self.config = {"kind": "features", "n_beads": int(n_beads), "bonds": b.tolist(), "hidden": hidden, "layers": layers,
                       "torsions": torsions}
        if torsions not in ("smooth", "angle"):
            raise ValueError(f"torsions must be 'smooth' or 'angle', got {torsions!r}")
        i, j = np.triu_indices(n_beads, k=1)
        self.register_buffer("pairs", torch.as_tensor(np.stack([i, j], 1), dtype=torch.long))
        self.register_buffer("triples", torch.as_tensor(angle_triples(b), dtype=torch.long))
        self.register_buffer("quads", torch.as_tensor(dihedral_quads(b), dtype=torch.long))
        nf = len(i) + len(self.triples) + 2 * len(self.quads)
        self.register_buffer("mean", torch.zeros(nf))
        self.register_buffer("std", torch.ones(nf))
        mods: list[nn.Module] = []
        w = nf
        for _ in range(layers):
            mods += [nn.Linear(w, hidden), nn.SiLU()]
            w = hidden
        mods.append(nn.Linear(w, 1))
        self.mlp = nn.Sequential(*mods)
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()
        if reference is not None:
            with torch.no_grad():
                f = self.features(torch.as_tensor(np.asarray(reference)[:20000], dtype=torch.float32))
                self.mean.copy_(f.mean(0))
                self.std.copy_(f.std(0).clamp(min=1e-3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        from .priors import bond_angles, bond_lengths, torsion_components, torsions

        parts = [bond_lengths(x, self.pairs)]
        if len(self.triples):
            parts.append(torch.cos(bond_angles(x, self.triples)))
        if len(self.quads):
            if self.config["torsions"] == "smooth":
                parts += list(torsion_components(x, self.quads))
            else:
                t = torsions(x, self.quads)
                parts += [torch.cos(t), torch.sin(t)]
        return torch.cat(parts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.dtype)
        return self.mlp((self.features(x) - self.mean) / self.std).squeeze(-1)

    def energy_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B,) and forces (B, n, 3) in the net's dtype: analytic for Linear/SiLU MLPs, else autograd."""
        from .analytic_forces import feature_net_energy_forces, mlp_supported

        if mlp_supported(self.mlp):
            return feature_net_energy_forces(self, x)
        return _autograd_energy_forces(self, x.to(self.mean.dtype))

    @property
    def types(self) -> torch.Tensor:  # for state(): feature nets have no bead types
        return torch.zeros(0, dtype=torch.long)


class CGPotential(nn.Module):
    """Priors (fixed, float64 buffers) + optional network (float32). ``forward(x)`` -> energies (B,).

    Parameters
    ----------
    priors : a fitted :class:`cg.priors.Priors` (or None for a network-only potential).
    net : a :class:`SchNetCG` (or None for priors only).
    names, masses, bonds : bead names, masses (amu) and bond graph, kept for MD and evaluation.
    """

    def __init__(self, priors: Priors | None, net: SchNetCG | None, names: list[str], masses: np.ndarray,
                 bonds: np.ndarray, temperature: float = 300.0) -> None:
        super().__init__()
        if priors is None and net is None:
            raise ValueError("a CG potential needs priors, a network, or both")
        self.priors, self.net = priors, net
        self.names = list(names)
        self.register_buffer("masses", torch.as_tensor(np.asarray(masses, dtype=float)))
        self.register_buffer("bonds", torch.as_tensor(np.asarray(bonds, dtype=int).reshape(-1, 2)))
        self.temperature = float(temperature)
        self.domain = None

    def set_domain(self, domain: "TorsionDomain | None") -> None:
        """Gate the network with a :class:`cg.domain.TorsionDomain`: ``U = U_prior + g (U_net - c)``."""
        self.domain = None if domain is None else domain.to(self.masses.device)

    @property
    def n_beads(self) -> int:
        return len(self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        E = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if self.priors is not None:
            E = E + self.priors(x)
        if self.net is not None:
            En = self.net(x).to(x.dtype)
            if self.domain is not None:
                En = self.domain(x) * (En - self.domain.offset.to(x.dtype))
            E = E + En
        return E

    def energy_forces(self, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies (B,), forces (B, n, 3)) with forces = -∂E/∂x by autograd."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True) if not x.requires_grad else x
            E = self(xg)
            (g,) = torch.autograd.grad(E.sum(), xg, create_graph=create_graph)
        return (E if create_graph else E.detach()), (-g if create_graph else -g.detach())

    def fast_energy_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same values as :meth:`energy_forces` (no ``create_graph``) for MD: analytic prior forces, the
        network's own ``energy_forces`` where it has one (FeatureNet: analytic), else autograd on the network only."""
        with torch.no_grad():
            if self.priors is not None:
                E, F = self.priors.energy_forces(x)
            else:
                E, F = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), torch.zeros_like(x)
        if self.net is not None:
            En, Fn = self.net_energy_forces(x)
            E, F = E + En, F + Fn
        return E, F

    def net_energy_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's (gated, when a domain is set) energies and forces in ``x``'s dtype, without a graph."""
        if hasattr(self.net, "energy_forces"):
            with torch.no_grad():
                En, Fn = self.net.energy_forces(x)
        else:
            En, Fn = _autograd_energy_forces(self.net, x)
        En, Fn = En.to(x.dtype), Fn.to(x.dtype)
        if self.domain is None:
            return En, Fn
        from .analytic_forces import torsion_bwd, torsion_fwd

        with torch.no_grad():
            d = self.domain
            c, s, sv = torsion_fwd(x, d.quads)
            g, gc, gs = d.gate_grad(c, s)
            u = En - d.offset.to(x.dtype)
            G = torch.zeros_like(x)
            torsion_bwd(G, d.quads, sv, gc * u[:, None], gs * u[:, None])
            return g * u, g[:, None, None] * Fn - G

    def force_rmse(self, R, F, batch: int = 4096) -> float:
        """Force RMSE (kcal/mol/Å) of :meth:`fast_energy_forces` over frames R (M, n, 3) Å against F (M, n, 3)."""
        R = torch.as_tensor(R, dtype=torch.float64)
        F = torch.as_tensor(F, dtype=torch.float64)
        dev = self.masses.device
        se = 0.0
        for i in range(0, len(R), batch):
            _, Fp = self.fast_energy_forces(R[i:i + batch].to(dev))
            se += float(((Fp.cpu().double() - F[i:i + batch]) ** 2).sum())
        return (se / F.numel()) ** 0.5

    def force_fn(self, dtype: torch.dtype = torch.float32, fast: bool = False):
        """Callable for :func:`forcefield.langevin.simulate`: positions -> (E, F), evaluated in ``dtype``
        (``fast``: :meth:`fast_energy_forces`, else autograd through :meth:`forward`)."""
        ef = self.fast_energy_forces if fast else self.energy_forces

        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            E, F = ef(x.to(dtype))
            return E.to(x.dtype), F.to(x.dtype)
        return fn

    # ------------------------------------------------------------- files
    def state(self) -> dict[str, Any]:
        """Plain dict of tensors/numbers/strings (loads with ``torch.load(weights_only=True)``)."""
        return {
            "format": "cgworkbench-cgpotential", "version": 1, "names": self.names,
            "masses": self.masses.detach().cpu(), "bonds": self.bonds.detach().cpu(), "temperature": self.temperature,
            "priors": None if self.priors is None else self.priors.state(),
            "net_config": None if self.net is None else dict(self.net.config),
            "net_types": None if self.net is None else self.net.types.detach().cpu(),
            "net_state": None if self.net is None else {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "domain": None if self.domain is None else self.domain.state(),
        }

    @classmethod
    def from_state(cls, s: dict[str, Any], device: str | torch.device = "cpu") -> "CGPotential":
        from forcefield.errors import InputError

        if s.get("format") != "cgworkbench-cgpotential":
            raise InputError(f"not a cgworkbench CG potential (format {s.get('format')!r})")
        priors = Priors.from_state(s["priors"]) if s["priors"] is not None else None
        net = None
        if s["net_config"] is not None:
            c = dict(s["net_config"])
            kind = c.pop("kind", "schnet")
            if kind == "e3nn":
                from .nets.equivariant import EquivariantCG

                net = EquivariantCG.from_config(s["net_types"].numpy(), c)
            elif kind == "features":
                net = FeatureNet(c["n_beads"], np.array(c["bonds"]), c["hidden"], c["layers"],
                                 torsions=c.get("torsions", "angle"))
            else:
                c.pop("n_types")
                net = SchNetCG(s["net_types"].numpy(), **c)
            net.load_state_dict(s["net_state"])
        pot = cls(priors, net, s["names"], s["masses"].numpy(), s["bonds"].numpy(), s["temperature"])
        if s.get("domain") is not None:
            from .domain import TorsionDomain

            pot.set_domain(TorsionDomain.from_state(s["domain"]))
        return pot.to(device)

    def save(self, path: str) -> None:
        """Write the potential atomically (torch.save of :meth:`state`)."""
        from forcefield.fileio import atomic_path

        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "CGPotential":
        """Read a potential written by :meth:`save` or a training checkpoint (``weights_only=True``)."""
        from pathlib import Path

        from forcefield.errors import InputError

        if not Path(path).exists():
            raise InputError(f"{path}: no such file")
        try:
            s = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable CG potential ({e})") from e
        if isinstance(s, dict) and "potential" in s:  # a training checkpoint: its best network
            best = s.get("best_net")
            s = dict(s["potential"])
            if best is not None and s.get("net_state") is not None:
                s["net_state"] = best
        try:
            return cls.from_state(s, device)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None


def _autograd_energy_forces(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(energies, forces = -∂E/∂x) of an energy module by autograd, detached."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        E = module(xg)
        (g,) = torch.autograd.grad(E.sum(), xg)
    return E.detach(), -g.detach()


def bead_types(names: list[str]) -> np.ndarray:
    """Integer types from bead names (equal names share a type), in order of first appearance."""
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(n, len(seen)) for n in names], dtype=int)


def build_potential(priors: Priors | None, names: list[str], masses: np.ndarray, bonds: np.ndarray,
                    types: np.ndarray | None = None, temperature: float = 300.0, network: bool | str = True,
                    device: str | torch.device = "cpu", reference: np.ndarray | None = None,
                    **net_kw: Any) -> CGPotential:
    """Priors + a fresh network over the beads.

    ``network``: ``True``/``"schnet"`` (:class:`SchNetCG`; types default to one per distinct bead name),
    ``"features"`` (:class:`FeatureNet`; ``reference`` frames set its feature scaling), ``"e3nn"``
    (:class:`cg.nets.equivariant.EquivariantCG`, equivariant message passing), or ``False`` (priors only).
    """
    if network in (True, "schnet"):
        t = bead_types(names) if types is None else np.asarray(types, dtype=int)
        net = SchNetCG(t, **net_kw)
    elif network == "features":
        net = FeatureNet(len(names), bonds, reference=reference, **net_kw)
    elif network == "e3nn":
        from .nets.equivariant import EquivariantCG

        net = EquivariantCG(bead_types(names) if types is None else np.asarray(types, dtype=int), **net_kw)
    elif network in (False, None, "none"):
        net = None
    else:
        raise ValueError(f"unknown network {network!r}; expected 'schnet', 'features', 'e3nn' or False")
    return CGPotential(priors, net, names, masses, bonds, temperature).to(device)
