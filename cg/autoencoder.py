"""Learned CG mappings: a coarse-graining autoencoder (after Wang & Gómez-Bombarelli, npj Comput. Mater. 2019).

Model
-----
* assignment logits ``L`` (n_beads, N); each step draws one assignment with the Gumbel-softmax trick
  per atom (over beads) at temperature ``T`` (annealed geometrically from ``t0`` to ``tmin``); with
  ``hard=True`` the forward pass uses the one-hot sample (straight-through gradients);
* encoder: bead = weighted centroid of its atoms (mass or geometric weights);
* decoder: linear bead -> atom map on Kabsch-aligned frames. ``decoder="ridge"`` (default) solves the
  best linear decoder in closed form for every batch (differentiable least squares, so the encoder is
  trained against the optimal decoder); ``"linear"`` learns ``D, b`` by gradient descent (Autograin);
  ``"equivariant"`` learns D with rows summing to one and no offset (rotation/translation equivariant);
* loss = reconstruction MSE (Å²) + ``rho`` · mean squared instantaneous mapped force (bead force = sum of
  its atoms' forces, (kcal/mol/Å)²; Autograin's force regulariser) + ``compact`` · mean squared
  atom-to-bead distance (Å²) + ``occupancy`` · Σ_k max(0, min_atoms − expected groups in bead k)².
  By default the force term is its exact expectation over independent per-group assignments
  P = softmax(L / T): E|Σ A F|² = |Σ P F|² + Σ P(1−P)|F|². The straight-through gradient of one sample
  (``force_term="sample"``, as Autograin) linearises the discrete change and misses the |F_i|² part of a
  move, which dominates for atomic forces; in our runs it hardly lowered the mapped force.
* ``united_atoms=True`` (default) keeps hydrogens with their heavy atom (the learned unit is a heavy atom
  with its hydrogens).

Output: argmax of the logits, repaired so that every atom is in one bead, no bead is empty and every
bead is bond-connected (:func:`cg.repair.repair_assignment`), then (``refine=True``) polished by greedy
single-atom moves on the same hard loss over the training frames (:func:`cg.repair.refine_assignment`).
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from forcefield.errors import InputError

from .forces import as_force_provider
from .linear_decoder import align_frames, objective_terms, reconstruction_rmsd
from .mapping import Mapping
from .repair import refine_assignment, repair_assignment

DECODERS = ("ridge", "linear", "equivariant")


def _load_data(data: Any, selection: str, atom_bonds: Any) -> dict[str, Any]:
    """R, F, masses, bonds, names from a Dataset, .npz path, Universe/AtomGroup."""
    from forcefield import Dataset, load_dataset
    from forcefield.elements import masses as element_masses
    from forcefield.geometry import covalent_bonds

    bonds = None
    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    if hasattr(data, "atoms") and hasattr(data, "universe"):  # Universe or AtomGroup
        from .selections import atom_bonds as group_bonds, atom_masses

        atoms = data.atoms if selection == "all" else data.select_atoms(selection)
        ds = _dataset_of_group(atoms)
        masses, names = atom_masses(atoms), [str(n) for n in atoms.names]
        bonds = group_bonds(atoms)
    elif isinstance(data, Dataset):
        ds = data
        masses = element_masses(ds.z)
        names = [str(n) for n in ds.extra["atom_names"]] if "atom_names" in ds.extra else None
    else:
        raise InputError(f"learn_mapping: expected a Dataset, .npz path, Universe or AtomGroup, got {type(data).__name__}")
    if atom_bonds is not None:
        bonds = np.asarray(atom_bonds, dtype=int).reshape(-1, 2)
    elif bonds is None or len(bonds) == 0:
        bonds = covalent_bonds(ds.R[0], ds.z)
    return {"R": ds.R, "F": ds.F, "masses": np.asarray(masses, float), "bonds": bonds, "names": names}


def _dataset_of_group(atoms: Any) -> Any:
    """Every frame of an AtomGroup as a Dataset (forces converted from kJ/(mol Å) to kcal/mol/Å)."""
    from forcefield import Dataset
    from forcefield.units import KCAL_PER_KJ
    from forcefield.universe import elements_of

    if atoms.n_atoms == 0:
        raise InputError("learn_mapping: the atom selection is empty")
    R, F = [], []
    for ts in atoms.universe.trajectory:
        R.append(atoms.positions.astype(np.float64))
        if getattr(ts, "has_forces", False):
            F.append(atoms.forces.astype(np.float64) * KCAL_PER_KJ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = elements_of(atoms)
    return Dataset(R=np.stack(R), z=z, F=np.stack(F) if len(F) == len(R) else None, name="universe")


def _kmeans_logits(ref: np.ndarray, w: np.ndarray, n_beads: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Initial logits from weighted k-means++ on the reference structure: -|r_i - c_k|² / scale²."""
    centres = [ref[rng.choice(len(ref), p=w / w.sum())]]
    for _ in range(1, n_beads):
        d2 = ((ref[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        p = w * d2
        centres.append(ref[rng.choice(len(ref), p=p / p.sum())] if p.sum() > 0 else ref[rng.integers(len(ref))])
    c = np.array(centres)
    for _ in range(25):
        lab = ((ref[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for k in range(n_beads):
            if (lab == k).any():
                c[k] = (w[lab == k, None] * ref[lab == k]).sum(0) / w[lab == k].sum()
    return -((ref[None] - c[:, None]) ** 2).sum(-1) / scale**2


def learn_mapping(data: Any, n_beads: int, *, epochs: int = 100, batch_size: int = 256, lr: float = 0.05,
                  rho: float = 1e-5, force_term: str = "expected", compact: float = 0.0, occupancy: float = 1.0, min_atoms: float = 1.0,
                  t0: float = 4.0, tmin: float = 0.1, hard: bool = True, decoder: str = "ridge",
                  weighting: str = "com", init: str = "kmeans", refine: bool = True, restarts: int = 1,
                  val_fraction: float = 0.1, united_atoms: bool = True, selection: str = "all", atom_bonds: Any = None,
                  forces: Any = None, max_frames: int | None = None, device: Any = None, threads: int | None = 1, seed: int = 0, progress: bool = True,
                  return_history: bool = False) -> Any:
    """Learn a hard CG mapping with ``n_beads`` beads by a coarse-graining autoencoder.

    Parameters
    ----------
    data : Dataset, sGDML ``.npz`` path, MDAnalysis Universe or AtomGroup (positions Å; forces
        kcal/mol/Å used for the force term when present).
    n_beads : number of beads.
    epochs, batch_size, lr : training length, frames per step, Adam learning rate.
    rho : weight of the mean squared mapped force ((kcal/mol/Å)²); 0 switches the term off.
    force_term : ``"expected"`` (default): the exact expectation of the squared bead force over the
        assignment distribution softmax(logits / T) (annealed towards the argmax map), noise-free and including the |F_i|² change a discrete move
        makes; ``"sample"``: the squared force of the sampled straight-through assignment (Autograin).
    compact, occupancy, min_atoms : weights of the compactness and non-empty terms (see module docstring).
    t0, tmin, hard : Gumbel-softmax temperature schedule and straight-through hard samples.
    decoder : ``"ridge"`` (closed form per batch), ``"linear"`` or ``"equivariant"`` (learned).
    weighting : ``"com"`` or ``"cog"`` bead centroids.
    init : ``"kmeans"`` (logits from k-means on the mean structure) or ``"random"``.
    refine : polish the hard map by greedy single-atom moves on the hard loss (training frames).
    restarts : independent training runs (seeds ``seed``, ``seed + 1``, ...); the hard map with the lowest
        hard loss on the training frames is kept.
    val_fraction : share of frames held out (the last ones) for the reported validation RMSD.
    united_atoms : keep every hydrogen in the bead of the heavy atom it is bonded to (learn over heavy-atom
        groups). Without it, reconstruction alone favours beads of a single methyl hydrogen.
    selection : atoms to map when ``data`` is a Universe.
    atom_bonds : (n_bonds, 2) bond graph; default topology bonds or covalent radii on the first frame.
    forces : force provider (callable or ``.predict``; ``R Å -> F kcal/mol/Å``) when data lacks forces.
    max_frames : use at most this many frames (evenly strided).
    device : torch device (default: cuda when available, else cpu); seed : makes the result reproducible.
    threads : CPU threads for torch during training (default 1: the tensors are small, and extra threads
        only add synchronisation, badly so on a busy machine); None keeps torch's setting.
    return_history : return ``(mapping, history)`` instead of the mapping.

    Returns
    -------
    Mapping (``source`` says how it was learned) with ``mapping.history``: per-epoch lists ``epoch,
    temperature, loss, recon_rmsd, force_msq, compact_msd, occupancy, seconds`` and final figures
    ``final`` (train/val reconstruction RMSD in Å with the fitted linear decoder, mean mapped-force norm,
    hard loss, refinement moves, chosen restart, the atom assignment before refinement, seconds per epoch).
    """
    import torch

    if threads is None:
        return _learn(data, n_beads, **_kw(locals()))
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return _learn(data, n_beads, **_kw(locals()))
    finally:
        torch.set_num_threads(old)


def _kw(loc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in loc.items() if k not in ("data", "n_beads", "threads", "torch", "old")}


def _learn(data: Any, n_beads: int, *, epochs: int, batch_size: int, lr: float, rho: float, force_term: str,
           compact: float,
           occupancy: float, min_atoms: float, t0: float, tmin: float, hard: bool, decoder: str, weighting: str,
           init: str, refine: bool, restarts: int, val_fraction: float, united_atoms: bool, selection: str,
           atom_bonds: Any, forces: Any, max_frames: int | None, device: Any, seed: int, progress: bool,
           return_history: bool) -> Any:
    import torch

    if decoder not in DECODERS:
        raise InputError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if force_term not in ("expected", "sample"):
        raise InputError(f"unknown force_term {force_term!r}; expected 'expected' or 'sample'")
    d = _load_data(data, selection, atom_bonds)
    R, F, masses, bonds = d["R"], d["F"], d["masses"], d["bonds"]
    N = R.shape[1]
    group = _united_groups(masses, bonds) if united_atoms else np.arange(N)
    G = int(group.max()) + 1
    gbonds = np.unique(np.sort(group[bonds], axis=1), axis=0) if len(bonds) else bonds
    gbonds = gbonds[gbonds[:, 0] != gbonds[:, 1]] if len(gbonds) else gbonds
    if not 1 <= n_beads <= G:
        raise InputError(f"n_beads must be between 1 and the number of {'heavy-atom groups' if united_atoms else 'atoms'}"
                         f" ({G}), got {n_beads}")
    if max_frames and len(R) > max_frames:
        idx = np.linspace(0, len(R) - 1, max_frames).round().astype(int)
        R, F = R[idx], None if F is None else F[idx]
    if F is None and forces is not None:
        F = as_force_provider(forces)(R)
    if F is None and rho > 0:
        warnings.warn("learn_mapping: no forces (data has none and no force provider given); rho term off")
    n_val = int(round(val_fraction * len(R))) if len(R) > 10 else 0
    n_tr = len(R) - n_val
    A, ref, Fa = align_frames(R[:n_tr], F=None if F is None else F[:n_tr])
    Av = align_frames(R[n_tr:], ref)[0] if n_val else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    w_np = masses if weighting == "com" else np.ones(N)
    ctx = dict(A=A, ref=ref, Fa=Fa if rho > 0 else None, group=group, G=G, w_np=w_np, n_beads=n_beads,
               epochs=epochs, batch_size=batch_size, lr=lr, rho=rho, compact=compact, occupancy=occupancy,
               min_atoms=min_atoms, t0=t0, tmin=tmin, hard=hard, decoder=decoder, init=init, device=device,
               force_term=force_term, progress=progress)
    sub = np.linspace(0, n_tr - 1, min(n_tr, 2000)).round().astype(int)
    As, Fs = A[sub], None if (Fa is None or rho <= 0) else Fa[sub]

    def hard_loss(a: np.ndarray) -> float:
        t = objective_terms(a[group], n_beads, As, masses, weighting, Fs)
        return t["recon"] + compact * t["compact"] + rho * t.get("force", 0.0)

    best = None
    for r in range(max(1, restarts)):
        L, hist = _train_logits(ctx, seed=int(seed) + r)
        raw = repair_assignment(L.argmax(0), L, gbonds)
        gassign, moves = raw, 0
        if refine:
            gassign, val, moves = refine_assignment(raw, gbonds, hard_loss)
        else:
            val = hard_loss(gassign)
        if best is None or val < best[0] - 1e-12:
            best = (val, gassign, moves, hist, r, raw)
    val, gassign, moves, hist, r_best, raw = best
    assign = gassign[group]
    beads = [np.flatnonzero(assign == k) for k in range(n_beads)]
    order = np.argsort([b.min() for b in beads], kind="stable")
    m = Mapping(beads=[beads[k] for k in order], atom_masses=masses, weighting=weighting,
                names=[f"B{k}" for k in range(n_beads)], atom_bonds=bonds, atom_names=d["names"],
                source=f"learned autoencoder: {n_beads} beads, decoder {decoder}, rho {rho:g}, seed {seed}")
    m.check(complete=True, connected=True)
    rec = reconstruction_rmsd(m, A, Av, aligned=True)
    hist["final"] = {"recon_rmsd_train": rec["train"], "recon_rmsd_val": rec.get("test"),
                     "mapped_force_norm": None if F is None else float(np.linalg.norm(m.map_forces(F), axis=-1).mean()),
                     "hard_loss": float(val), "refine_moves": int(moves), "restart": int(r_best),
                     "unrefined_assignment": raw[group].tolist(),
                     "seconds_per_epoch": float(np.mean(hist["seconds"])) if epochs else 0.0}
    m.history = hist
    return (m, hist) if return_history else m


def _train_logits(c: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One autoencoder training run (shared trainer); returns the final logits (n_beads, groups) and the history."""
    import torch

    from .trainer import TrainerConfig, fit, loader

    A, ref, Fa, group, G, w_np = c["A"], c["ref"], c["Fa"], c["group"], c["G"], c["w_np"]
    n_beads, epochs, batch_size, device = c["n_beads"], c["epochs"], c["batch_size"], c["device"]
    rng = np.random.default_rng(seed)
    gw = np.bincount(group, weights=w_np, minlength=G)
    gref = np.stack([np.bincount(group, weights=w_np * ref[:, d], minlength=G) for d in range(3)], 1) / gw[:, None]
    if c["init"] == "kmeans":
        L0 = _kmeans_logits(gref, gw, n_beads, rng, scale=1.0) + 0.01 * rng.standard_normal((n_beads, G))
    elif c["init"] == "random":
        L0 = rng.standard_normal((n_beads, G))
    else:
        raise InputError(f"unknown init {c['init']!r}; expected 'kmeans' or 'random'")
    tensors = [torch.as_tensor(A, dtype=torch.float32)]
    if Fa is not None:  # forces summed over united-atom groups (G groups): a bead's force sums its groups'
        Fg = np.zeros((len(Fa), G, 3))
        np.add.at(Fg, (slice(None), group), Fa)
        tensors.append(torch.as_tensor(Fg, dtype=torch.float32))
    module = _autoencoder_module()(c, L0)
    cfg = TrainerConfig(max_epochs=epochs, monitor=None, restore_best=False, progress=c["progress"],
                        device=device, seed=int(seed))
    fit(module, loader(tensors, np.arange(len(A)), batch_size, shuffle=True, seed=int(seed), drop_last=True),
        None, cfg)
    keys = ("loss", "recon_rmsd", "force_msq", "compact_msd", "occupancy")
    hist: dict[str, Any] = {"epoch": [float(r["epoch"]) for r in module.history],
                            "temperature": [float(r["temperature"]) for r in module.history]}
    hist.update({k: [float(r[f"train_{k}"]) for r in module.history] for k in keys})
    hist["seconds"] = [float(r["seconds"]) for r in module.history]
    hist = {k: hist[k] for k in ("epoch", "temperature", *keys, "seconds")}
    return module.logits.detach().cpu().numpy().astype(float), hist


@lru_cache(maxsize=None)
def _autoencoder_module() -> type:
    """The Lightning module class (built on first use: Lightning is imported only when a map is learned)."""
    import torch

    from .trainer import TrainModule

    class MapAutoencoder(TrainModule):
        """Gumbel-softmax assignment logits + bead centroids + linear decoder; Gumbel noise seeded per epoch."""

        seed_steps = False  # its own generator, seeded per epoch

        def __init__(self, c: dict[str, Any], L0: np.ndarray) -> None:
            super().__init__()
            self.c = c
            dt = torch.float32
            self.logits = torch.nn.Parameter(torch.as_tensor(L0, dtype=dt))
            self.register_buffer("w_atom", torch.as_tensor(c["w_np"], dtype=dt), persistent=False)
            self.register_buffer("gidx", torch.as_tensor(c["group"]), persistent=False)
            N = len(c["w_np"])
            self.D_par = self.b_par = None
            if c["decoder"] != "ridge":
                C0 = torch.softmax(self.logits.detach(), 0)[:, self.gidx] * self.w_atom
                self.D_par = torch.nn.Parameter((C0 / C0.sum(1, keepdim=True)).T.clone())
                if c["decoder"] == "linear":
                    self.b_par = torch.nn.Parameter(torch.zeros(N, 3, dtype=dt))
            self.gen: torch.Generator | None = None
            self.T = float(c["t0"])

        def make_optimizer(self) -> tuple[Any, Any, str]:
            params = [p for p in (self.logits, self.D_par, self.b_par) if p is not None]
            return torch.optim.Adam(params, lr=self.c["lr"]), None, "epoch"

        def on_train_epoch_start(self) -> None:
            super().on_train_epoch_start()
            c, ep = self.c, self.epoch
            self.T = c["t0"] * (c["tmin"] / c["t0"]) ** (ep / max(1, c["epochs"] - 1))
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(int(np.random.SeedSequence([self.seed, ep, self.global_rank]).generate_state(1)[0]))

        def train_step(self, batch: Any, batch_idx: int) -> tuple[Any, dict]:
            c, T, logits = self.c, self.T, self.logits
            x = batch[0]
            u = torch.rand(logits.shape, generator=self.gen, device=self.device, dtype=logits.dtype)
            g = -torch.log(-torch.log(u + 1e-10) + 1e-10)
            soft = torch.softmax((logits + g) / T, dim=0)
            if c["hard"]:
                one = torch.zeros_like(soft).scatter_(0, soft.argmax(0, keepdim=True), 1.0)
                assign = (one - soft).detach() + soft
            else:
                assign = soft
            soft_g = assign
            assign = assign[:, self.gidx]
            wts = assign * self.w_atom
            C = wts / (wts.sum(1, keepdim=True) + 1e-8)
            X = torch.einsum("kn,bnd->bkd", C, x)
            if c["decoder"] == "ridge":
                xhat = _ridge_decode(X, x)
            elif c["decoder"] == "linear":
                xhat = torch.einsum("bkd,nk->bnd", X, self.D_par) + self.b_par
            else:
                Dq = self.D_par + (1.0 - self.D_par.sum(1, keepdim=True)) / c["n_beads"]
                xhat = torch.einsum("bkd,nk->bnd", X, Dq)
            recon = ((xhat - x) ** 2).sum(-1).mean()
            comp = (assign * ((x[:, None] - X[:, :, None]) ** 2).sum(-1)).sum(1).mean()
            occ = torch.softmax(logits, 0).sum(1)  # expected groups per bead
            occ_pen = torch.relu(c["min_atoms"] - occ).pow(2).sum()
            loss = recon + c["compact"] * comp + c["occupancy"] * occ_pen
            fterm = torch.zeros((), device=self.device)
            if len(batch) > 1:
                fg = batch[1]
                if c["force_term"] == "expected":
                    # exact expectation over independent categorical assignments P (groups -> beads):
                    # E|Σ_g A_kg F_g|² = |Σ_g P_kg F_g|² + Σ_g P_kg (1 - P_kg) |F_g|², with the annealed
                    # P = softmax(logits / T), which becomes the argmax map as T drops
                    fterm = expected_squared_force(torch.softmax(logits / T, 0), fg)
                else:  # one sampled (straight-through) assignment, as Autograin
                    fterm = (torch.einsum("kg,bgd->bkd", soft_g, fg) ** 2).sum(-1).mean()
                loss = loss + c["rho"] * fterm
            parts = {"loss": loss, "recon": recon, "force_msq": fterm, "compact_msd": comp, "occupancy": occ.min()}
            return loss, {k: (float(v.detach()), 1) for k, v in parts.items()}  # means over batches

        def metrics(self, sums: dict, prefix: str) -> dict[str, float]:
            m = {k: s / n for k, (s, n) in sums.items()}
            return {f"{prefix}loss": m["loss"], f"{prefix}recon_rmsd": float(np.sqrt(m["recon"])),
                    f"{prefix}force_msq": m["force_msq"], f"{prefix}compact_msd": m["compact_msd"],
                    f"{prefix}occupancy": m["occupancy"]}

        def epoch_extra(self) -> dict[str, float]:
            return {"temperature": float(self.T)}

        def epoch_line(self, r: dict) -> str:
            return f"T {r['temperature']:.2f}  recon {r['train_recon_rmsd']:.3f} Å  f2 {r['train_force_msq']:.0f}"

    return MapAutoencoder


def expected_squared_force(P: Any, F: Any) -> Any:
    """Mean over frames and beads of E|f_k|², f_k = Σ_g A_kg F_g, for independent one-hot columns A ~ P.

    ``P`` (n_beads, G): per group, probabilities over beads (columns sum to one); ``F`` (B, G, 3) torch
    tensors. E|f_k|² = |Σ_g P_kg F_g|² + Σ_g P_kg (1 − P_kg) |F_g|².
    """
    import torch

    mean_f = torch.einsum("kg,bgd->bkd", P, F)
    return (mean_f**2).sum(-1).mean() + torch.einsum("kg,bg->bk", P * (1 - P), (F**2).sum(-1)).mean()


def _united_groups(masses: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """(N,) group index: each heavy atom with the hydrogens bonded to it (a lone hydrogen is its own group)."""
    N = len(masses)
    is_h = masses < 2.5
    heavy_of = np.arange(N)
    for a, b in np.asarray(bonds, dtype=int).reshape(-1, 2):
        if is_h[a] and not is_h[b]:
            heavy_of[a] = b
        elif is_h[b] and not is_h[a]:
            heavy_of[b] = a
    _, group = np.unique(heavy_of, return_inverse=True)
    return group


def _ridge_decode(X: Any, x: Any, ridge: float = 1e-5) -> Any:
    """Best linear decoder for this batch, in closed form: x̂ = b + D X (differentiable)."""
    import torch

    B, n, _ = X.shape
    Xm, xm = X.mean(0), x.mean(0)
    Phi = (X - Xm).permute(0, 2, 1).reshape(B * 3, n)
    Y = (x - xm).permute(0, 2, 1).reshape(B * 3, -1)
    G = Phi.T @ Phi
    G = G + ridge * (torch.diagonal(G).mean().detach() + 1e-6) * torch.eye(n, dtype=G.dtype, device=G.device)
    Dt = torch.linalg.solve(G, Phi.T @ Y)
    return torch.einsum("bkd,kn->bnd", X - Xm, Dt) + xm
