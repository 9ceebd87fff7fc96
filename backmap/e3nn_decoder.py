"""Equivariant backmapping decoder on e3nn: CG beads (+ residue/atom names) -> all atoms, for any peptide.

Model (:class:`E3nnDecoder`):

* bead nodes carry an embedding of their token (``"RESNAME:BEADNAME"``, e.g. ``"ALA:CA"`` for a Cα map)
  plus a linear map of invariant noise ``ε ~ N(0, T²)`` (``noise`` channels per bead), then
  ``n_layers`` e3nn interactions on the cutoff graph of the beads (:class:`cg.nets.EquivariantStack`:
  spherical harmonics of bead-bead vectors, radial MLP weights, tensor products, gates);
* every atom is named by a token ``"RESNAME:ATOMNAME"`` and a host bead (the bead it belongs to, or for atoms
  in no bead, the bead of its nearest bonded atom). Its displacement from the host is a combination of the
  host's vector channels (``1o`` vectors and ``1e`` pseudovectors) with invariant coefficients from an MLP of
  the atom's token embedding, the host's scalars and the host's noise. Summing ``1e`` channels as vectors
  makes the decoder rotation- but not mirror-equivariant, so it can place a chiral centre from a planar
  bead triple (a mirror-equivariant decoder could not leave the plane of three beads);
* offsets are re-centred with the mapping's weights, so mapping the decoded atoms gives back the beads.

Nothing in the model is indexed by atom or bead number: the topology (tokens, hosts, weights) is bound with
:meth:`E3nnDecoder.bind`, so one trained model serves any sequence whose tokens it has seen.

Generative training (:func:`train_e3nn_decoder`, on the shared trainer :mod:`cg.trainer`): conditional implicit maximum-likelihood estimation
(IMLE, Li & Malik 2018): for each training frame ``n_draws`` noise draws are decoded and the coordinate
error of the closest draw is minimised, so different draws learn different conformers (e.g. methyl rotamers)
instead of their average; interchangeable atoms (methyl hydrogens, carboxylate oxygens) are matched in their
best order. Bond, 1-3 distance and clash terms (:mod:`backmap.losses`) apply to every draw, so every sample
is chemically valid. Sampling is one forward pass per draw. Units: Å; float32 by default.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from cg.nets.equivariant import EquivariantStack
from forcefield.errors import InputError

from .losses import GeometryTerms, _pair_d, equivalent_groups, group_buffers, matched_sq_error
from .train import History, TrainConfig, cosine_adam

__all__ = ["DecoderConfig", "E3nnDecoder", "topology_tokens", "train_e3nn_decoder", "fit_e3nn_decoder"]


@dataclass
class DecoderConfig:
    """Hyper-parameters and vocabularies of :class:`E3nnDecoder` (stored as JSON with saved models)."""

    atom_vocab: list[str] = field(default_factory=list)
    bead_vocab: list[str] = field(default_factory=list)
    n_atoms: int = 0  # of the bound topology
    n_beads: int = 0
    hidden_irreps: str = "32x0e + 8x0o + 16x1o + 16x1e"
    lmax: int = 2
    n_layers: int = 3
    cutoff: float = 12.0
    n_rbf: int = 8
    radial_hidden: int = 32
    atom_hidden: int = 64
    noise: int = 8
    avg_neighbours: float = 4.0
    n_draws: int = 6  # IMLE draws per training frame
    symmetric: bool = True  # match interchangeable atoms (methyl H, carboxylate O) in their best order

    def to_dict(self) -> dict:
        return asdict(self)


def topology_tokens(mapping: Any, host: np.ndarray, pdb_text: str | None, z: np.ndarray
                    ) -> tuple[list[str], list[str]]:
    """Bead tokens ``"RES:BEAD"`` and atom tokens ``"RES:ATOM"`` of a mapping.

    With a topology (PDB text) residue and atom names come from it; a bead's residue is the most common one
    among its atoms (for a bead with no atoms, that of the atoms it hosts). Without one, atoms are named by
    element and rank within their host bead, and residues by the bead name.
    """
    n = mapping.n_beads
    if pdb_text is not None:
        from .universe import universe_from_pdb_text

        u = universe_from_pdb_text(pdb_text)
        res = [str(r) for r in u.atoms.resnames]
        names = [str(a) for a in u.atoms.names]
    else:
        res = [mapping.names[h] for h in host]
        rank = np.zeros(len(host), dtype=int)
        for b in range(n):
            idx = np.flatnonzero(host == b)
            rank[idx] = np.arange(len(idx))
        names = [f"Z{int(z[a])}_{rank[a]}" for a in range(len(host))]
    bead_res = []
    for b in range(n):
        atoms = list(mapping.beads[b]) or list(np.flatnonzero(host == b))
        rs = [res[a] for a in atoms]
        bead_res.append(max(set(rs), key=rs.count) if rs else mapping.names[b])
    return ([f"{bead_res[b]}:{mapping.names[b]}" for b in range(n)],
            [f"{res[a]}:{names[a]}" for a in range(len(host))])


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden), nn.SiLU(),
                         nn.Linear(n_hidden, n_out))


class E3nnDecoder(nn.Module):
    """Equivariant conditional generator of atom positions around CG beads (see module docstring).

    Parameters
    ----------
    cfg : hyper-parameters and token vocabularies.
    bead_tokens, atom_tokens, host, weights : topology to bind (optional; see :meth:`bind`).
    """

    def __init__(self, cfg: DecoderConfig, bead_tokens: list[str] | None = None, atom_tokens: list[str] | None = None,
                 host: np.ndarray | None = None, weights: np.ndarray | None = None) -> None:
        super().__init__()
        from e3nn import o3

        self.cfg = cfg
        n0 = o3.Irreps(cfg.hidden_irreps).count("0e")
        self.bead_emb = nn.Embedding(max(len(cfg.bead_vocab), 1), n0)
        self.noise_in = nn.Linear(cfg.noise, n0, bias=False)
        self.stack = EquivariantStack(n0, cfg.hidden_irreps, cfg.lmax, cfg.n_layers, cfg.cutoff, cfg.n_rbf,
                                      cfg.radial_hidden, cfg.avg_neighbours)
        sl_s, sl_v = [], []
        for (mul, ir), sl in zip(self.stack.irreps_out, self.stack.irreps_out.slices()):
            if ir.l == 0 and ir.p == 1:
                sl_s.append((sl.start, sl.stop))
            elif ir.l == 1:
                sl_v.append((sl.start, sl.stop))
        if not sl_v:
            raise ValueError(f"hidden irreps {cfg.hidden_irreps!r} give no vector channels to place atoms with")
        self._sl_s, self._sl_v = sl_s, sl_v
        n_s = sum(b - a for a, b in sl_s)
        n_v = sum(b - a for a, b in sl_v) // 3
        self.atom_emb = nn.Embedding(max(len(cfg.atom_vocab), 1), cfg.atom_hidden)
        self.coef = _mlp(cfg.atom_hidden + n_s + cfg.noise, cfg.atom_hidden, n_v)
        for name in ("bead_tok", "atom_tok", "host"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(0))
        self.register_buffer("member", torch.zeros(0, 0))
        if atom_tokens is not None:
            self.bind(bead_tokens, atom_tokens, host, weights)

    # ------------------------------------------------------------------ topology
    def bind(self, bead_tokens: list[str], atom_tokens: list[str], host: np.ndarray, weights: np.ndarray) -> "E3nnDecoder":
        """Bind a molecule: bead and atom tokens, host bead of every atom, re-centring weights (rows of the
        mapping matrix at the host; 0 for atoms in no bead). Unknown tokens are an :class:`InputError`."""
        def index(tokens: list[str], vocab: list[str], what: str) -> torch.Tensor:
            lookup = {t: i for i, t in enumerate(vocab)}
            missing = sorted({t for t in tokens if t not in lookup})
            if missing:
                raise InputError(f"{what} {', '.join(missing[:5])} not seen in training (the model knows "
                                 f"{len(vocab)} {what}s)")
            return torch.tensor([lookup[t] for t in tokens], dtype=torch.long)

        host = np.asarray(host, dtype=int)
        n, N = len(bead_tokens), len(atom_tokens)
        if len(host) != N or host.min(initial=0) < 0 or host.max(initial=0) >= n:
            raise InputError(f"host beads must be {N} indices in 0..{n - 1}")
        dev = self.bead_emb.weight.device
        self.bead_tok = index(list(bead_tokens), self.cfg.bead_vocab, "bead token").to(dev)
        self.atom_tok = index(list(atom_tokens), self.cfg.atom_vocab, "atom token").to(dev)
        self.host = torch.as_tensor(host, dtype=torch.long, device=dev)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=self.bead_emb.weight.dtype, device=dev)
        self.weights = w
        member = torch.zeros(N, n, dtype=w.dtype, device=dev)
        member[torch.arange(N), self.host] = w
        self.member = member
        self.cfg.n_atoms, self.cfg.n_beads = N, n
        return self

    @classmethod
    def from_state(cls, cfg: dict, state: dict[str, torch.Tensor]) -> "E3nnDecoder":
        """Rebuild from :meth:`DecoderConfig.to_dict` and a ``state_dict`` (topology buffers included)."""
        c = DecoderConfig(**cfg)
        m = cls(c)
        inv_b, inv_a = c.bead_vocab, c.atom_vocab
        m.bind([inv_b[i] for i in state["bead_tok"].tolist()], [inv_a[i] for i in state["atom_tok"].tolist()],
               state["host"].numpy(), state["weights"].numpy())
        m.load_state_dict(state)
        return m

    # ------------------------------------------------------------------ decoding
    def decode(self, X: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Atom positions (B, N, 3) from beads X (B, n, 3) Å and noise eps (B, n, noise)."""
        if self.atom_tok.numel() == 0:
            raise InputError("the decoder has no topology bound (E3nnDecoder.bind)")
        B, n, _ = X.shape
        if n != self.cfg.n_beads:
            raise InputError(f"{n} beads, but the decoder is bound to {self.cfg.n_beads}")
        s0 = self.bead_emb(self.bead_tok).repeat(B, 1) + self.noise_in(eps.reshape(B * n, -1))
        h, _ = self.stack(X, s0)
        h = h.view(B, n, -1)
        s = torch.cat([h[..., a:b] for a, b in self._sl_s], -1) if self._sl_s else h[..., :0]
        v = torch.cat([h[..., a:b].reshape(B, n, -1, 3) for a, b in self._sl_v], -2)    # (B, n, C, 3)
        inp = torch.cat([self.atom_emb(self.atom_tok)[None].expand(B, -1, -1), s[:, self.host], eps[:, self.host]], -1)
        off = torch.einsum("bac,bacd->bad", self.coef(inp), v[:, self.host])
        mean = torch.einsum("an,bad->bnd", self.member, off)   # mapping-weighted mean offset per bead
        return X[:, self.host] + off - mean[:, self.host]

    def noise(self, B: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise (B, n, noise) ~ N(0, temperature²) on the module's device."""
        e = torch.randn(B, self.cfg.n_beads, self.cfg.noise, generator=generator)
        return (temperature * e).to(self.bead_emb.weight)

    @torch.no_grad()
    def sample(self, X: torch.Tensor, n_samples: int = 1, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws (B, n_samples, N, 3) given beads X (B, n, 3)."""
        B = X.shape[0]
        Xs = X.repeat_interleave(n_samples, 0)
        return self.decode(Xs, self.noise(B * n_samples, temperature, generator)).view(B, n_samples, -1, 3)

    @torch.no_grad()
    def reconstruct(self, R: torch.Tensor, X: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The decoder has no encoder: the noise-free decode (``sample=False``) or one draw; ``R`` is unused."""
        eps = self.noise(X.shape[0]) if sample else self.noise(X.shape[0], 0.0)
        return self.decode(X, eps)


# ---------------------------------------------------------------------- training
class GeometryBuffers(nn.Module):
    """Index pairs and clash hinges of :class:`backmap.losses.GeometryTerms`, and groups of interchangeable
    atoms (:func:`equivalent_groups`, by size), as buffers (they follow the module's device)."""

    def __init__(self, terms: GeometryTerms, groups: list[list[int]] | None = None) -> None:
        super().__init__()
        for k in ("bonds", "angles13", "nonbonded"):
            self.register_buffer(k, torch.as_tensor(np.asarray(getattr(terms, k)), dtype=torch.long).reshape(-1, 2))
        self.register_buffer("clash_t", torch.as_tensor(np.asarray(terms.clash_t), dtype=torch.float32))
        self.sizes = group_buffers(self, groups)

    def coordinate_error(self, P: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Mean squared atom error (Å²) of draws P (b, K, N, 3) against R (b, N, 3), each group of
        interchangeable atoms matched in its best order: (b, K)."""
        return matched_sq_error(self, self.sizes, P, R[:, None])


def imle_loss(model: E3nnDecoder, terms: GeometryBuffers, R: torch.Tensor, X: torch.Tensor, tc: TrainConfig,
              geometry: float = 1.0, n_draws: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Closest-draw coordinate MSE (Å², interchangeable atoms in their best order) + geometry terms (bond,
    1-3, clash) averaged over all draws."""
    K = n_draws or model.cfg.n_draws
    b = R.shape[0]
    P = model.decode(X.repeat_interleave(K, 0), model.noise(b * K)).view(b, K, -1, 3)
    err = terms.coordinate_error(P, R)                                       # (b, K)
    parts = {"coord": err.min(1).values.mean(), "coord_mean": err.mean().detach()}
    Q, Rk = P.reshape(b * K, -1, 3), R.repeat_interleave(K, 0)
    zero = R.new_zeros(())
    bd, a13, nb = terms.bonds, terms.angles13, terms.nonbonded
    parts["bond"] = ((_pair_d(Q, bd) - _pair_d(Rk, bd)) ** 2).mean() if len(bd) else zero
    parts["angle"] = ((_pair_d(Q, a13) - _pair_d(Rk, a13)) ** 2).mean() if len(a13) else zero
    parts["clash"] = (torch.relu(terms.clash_t.to(Q.dtype) - _pair_d(Q, nb)) ** 2).mean() if len(nb) else zero
    total = parts["coord"] + geometry * (tc.gamma_bond * parts["bond"] + tc.gamma_angle * parts["angle"]
                                         + tc.gamma_clash * parts["clash"])
    return total, {k: float(v.detach()) for k, v in parts.items()}


@lru_cache(maxsize=None)
def _module_class() -> type:
    """The Lightning module (:class:`cg.trainer.TrainModule`), built on first use."""
    from cg.trainer import TrainModule

    class E3nnBackmapModule(TrainModule):
        """One IMLE step per batch; geometry weights ramped in per global step; cosine learning rate."""

        def __init__(self, model: E3nnDecoder, terms: GeometryBuffers, cfg: TrainConfig, steps_per_epoch: int) -> None:
            super().__init__()
            self.model, self.terms, self.cfg = model, terms, cfg
            self.steps_per_epoch, self.total = steps_per_epoch, cfg.epochs * steps_per_epoch

        def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any, str]:
            return cosine_adam(self.model.parameters(), self.cfg.lr, self.cfg.lr_min, self.total)

        def train_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, dict]:
            r, x = batch
            step = self.epoch * self.steps_per_epoch + batch_idx
            ramp = min(1.0, (step + 1) / max(1.0, self.cfg.beta_warmup * self.total))
            loss, parts = imle_loss(self.model, self.terms, r, x, self.cfg, ramp)
            return loss, {k: (v * len(r), len(r)) for k, v in parts.items()}

        def val_step(self, batch: Any) -> dict:
            r, x = batch
            loss, parts = imle_loss(self.model, self.terms, r, x, self.cfg, 1.0)
            parts["loss"] = float(loss)
            return {k: (v * len(r), len(r)) for k, v in parts.items()}

        def epoch_line(self, r: dict) -> str:
            return (f"closest-draw MSE {r.get('train_coord', float('nan')):.4f} Å²  val loss "
                    f"{r.get('val_loss', float('nan')):.4f}  {r['seconds']:.1f} s")

        def history_records(self) -> History:
            h = History()
            for rec in self.history:
                e = int(rec["epoch"]) + 1
                h.train.append({**{k[6:]: v for k, v in rec.items() if k.startswith("train_")}, "epoch": e})
                va = {k[4:]: v for k, v in rec.items() if k.startswith("val_")}
                if va:
                    h.val.append({**va, "epoch": e})
            return h

    return E3nnBackmapModule


def train_e3nn_decoder(model: E3nnDecoder, geometry: GeometryTerms, R: np.ndarray, X: np.ndarray, tc: TrainConfig,
                       device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None,
                       resume: bool = True, progress: bool = True, max_seconds: float | None = None,
                       lengths: Any = None, groups: list[list[int]] | None = None, **trainer: Any) -> History:
    """Fit the decoder by conditional IMLE on atoms R (M, N, 3) and beads X (M, n, 3), Å, centred per frame.

    Runs on the shared trainer (:func:`cg.trainer.fit`): contiguous train/validation blocks
    (:func:`forcefield.splits.block_split`; ``lengths``: frames per trajectory), Adam with a cosine
    schedule per step, geometry weights ramped in over the first ``tc.beta_warmup`` share of steps, the
    weights of the best epoch (validation loss) restored; checkpoints after every epoch (resumed with
    ``resume=True``); ``max_seconds`` bounds the time; ``groups``: interchangeable atoms matched in their
    best order in the coordinate error (:func:`equivalent_groups`); ``trainer``: more :class:`cg.trainer.TrainerConfig`
    fields (``log_dir``, ``devices``, ``strategy``...).
    """
    from cg.trainer import TrainerConfig, fit, loader
    from forcefield.splits import block_split

    M = len(R)
    tr, va = block_split(M, tc.val_fraction, lengths)
    Rt, Xt = torch.as_tensor(R, dtype=torch.float32), torch.as_tensor(X, dtype=torch.float32)
    steps = max(1, math.ceil(len(tr) / tc.batch_size))
    module = _module_class()(model, GeometryBuffers(geometry, groups), tc, steps)
    cfg = TrainerConfig(max_epochs=tc.epochs, monitor="val_loss", restore_best=True, checkpoint=checkpoint,
                        resume=resume, progress=progress, device=device, grad_clip=tc.grad_clip, seed=tc.seed,
                        max_seconds=max_seconds, **trainer)
    signature = {"n_frames": M, "n_train": len(tr), "n_val": len(va), "n_atoms": int(Rt.shape[1]),
                 "n_beads": int(Xt.shape[1]), "decoder": "e3nn"}
    val = loader((Rt, Xt), va, 4 * tc.batch_size, shuffle=False, pad=False) if len(va) else None
    fit(module, loader((Rt, Xt), tr, tc.batch_size, shuffle=True, seed=tc.seed), val, cfg, signature=signature,
        payload={"train_config": str(tc.to_dict())}, find_unused_parameters=True)
    model.to(device)
    model.eval()
    return module.history_records()


def fit_e3nn_decoder(mapping: Any, R: np.ndarray, X: np.ndarray, host: np.ndarray, weights: np.ndarray,
                     bonds: np.ndarray, topology: str | None, z: np.ndarray, tc: TrainConfig,
                     options: dict | None = None, device: str | torch.device = "cpu",
                     checkpoint: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
                     lengths: Any = None) -> tuple[E3nnDecoder, History]:
    """Build a decoder for ``mapping`` (tokens from ``topology``) and train it; used by
    :class:`backmap.Backmapper` with ``decoder="e3nn"``. ``options``: :class:`DecoderConfig` fields, plus
    ``max_seconds`` (training time bound)."""
    opts = dict(options or {})
    max_seconds = opts.pop("max_seconds", None)
    bead_tokens, atom_tokens = topology_tokens(mapping, host, topology, z)
    cfg = DecoderConfig(atom_vocab=sorted(set(atom_tokens)), bead_vocab=sorted(set(bead_tokens)), **opts)
    torch.manual_seed(tc.seed)
    model = E3nnDecoder(cfg, bead_tokens, atom_tokens, host, weights)
    geo = GeometryTerms.build(bonds, R, tc.clash_distance)
    groups = equivalent_groups(bonds, z) if model.cfg.symmetric else None
    hist = train_e3nn_decoder(model, geo, R, X, tc, device, checkpoint, resume, progress, max_seconds, lengths,
                              groups)
    return model, hist
