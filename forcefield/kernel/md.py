"""Supplying reference forces with a kernel force field: labelling and Langevin MD on many replicas.

Units: Å, kcal/mol, kcal/mol/Å, fs, K, amu.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pydantic import Field, model_validator

from ..config import Config
from ..dataset import Dataset
from ..elements import masses, repartitioned_masses
from ..errors import InputError, where
from ..langevin import Trajectory, simulate


def label_dataset(model, ds: Dataset, batch_size: int | None = None) -> Dataset:
    """A copy of ``ds`` whose energies and forces are the model's predictions."""
    if not np.array_equal(np.asarray(ds.z), model.z):
        raise InputError(f"{where(ds.source)}atoms {list(ds.z)} do not match the model's {list(model.z)}")
    E, F = model.predict(ds.R, batch_size=batch_size)
    out = ds.subset(slice(None))
    out.E, out.F, out.theory = E, F, "kernel force field"
    return out


def label_universe(model, u: Any, selection: str = "all", start: int | None = None, stop: int | None = None,
                   step: int | None = None) -> Dataset:
    """Label the frames of an MDAnalysis Universe/AtomGroup (atoms in the model's order) with the model."""
    ds = Dataset.from_universe(u, selection=selection, start=start, stop=stop, step=step)
    return label_dataset(model, ds)


class SymmetryFactoredPredictor:
    """Energies and forces of a fitted :class:`KernelForceField` for MD, with the permutation sum factorised.

    The model sums the kernel over every permuted copy ``P_p d_b`` of every training descriptor, which the
    generic prediction evaluates as dense products with all M·P copies (M training points, P permutations).
    But a descriptor entry (pair of atoms i, j) is moved by a permutation only through the symmetry orbits
    that contain i or j (a methyl's hydrogens, ...). Entries are grouped by that pair of orbits (a class);
    within a class only the restrictions of the permutations to those orbits matter, of which there are
    few (3 for one methyl, 9 for two, against P = 27 for alanine dipeptide). The products ``x·P_p d_b``,
    ``x·P_p w_b`` and the back-products ``Σ_p c_bp P_p d_b`` are evaluated per class over those
    restrictions only, then gathered (or marginalised) over p: the same numbers as the model's prediction
    (float64, to rounding) at a fraction of the arithmetic (~9x fewer for alanine dipeptide).

    Built from the model's saved arrays (``R_desc``, ``w``, ``alpha``, ``perms``), so it follows the file
    format, not the model's internals. ``block``: training points per pass (None: all at once); it bounds the
    work arrays to P·2·block·B float64 values for B geometries. Units: Å in; kcal/mol and kcal/mol/Å out.
    """

    def __init__(self, model, block: int | None = None) -> None:
        from ..kernel.descriptor import descriptor_permutation, pair_index

        st = model._state()
        dev = torch.device(model.device)
        f64 = torch.float64
        self.device, self.sigma, self.std, self.c = dev, float(model.sigma_), float(model.std), float(model.c)
        perms = np.asarray(st["perms"], dtype=int).reshape(-1, len(model.z))
        d = torch.as_tensor(np.asarray(st["R_desc"], dtype=float), device=dev)
        w = torch.as_tensor(np.asarray(st["w"], dtype=float), device=dev)
        alpha = torch.as_tensor(np.asarray(st["alpha"], dtype=float), device=dev) if "alpha" in st else None
        n, P, M = perms.shape[1], len(perms), len(d)
        self.n_atoms, self.P, self.M = n, P, M
        orbit = _orbits(perms)
        i, j = pair_index(n)
        q = np.stack([descriptor_permutation(p) for p in perms])  # (P, D)
        keys = [tuple(sorted({orbit[a], orbit[b]} - {-1})) for a, b in zip(i, j)]
        # the descriptor entries are reordered so that every class is one contiguous range [lo, hi)
        self.classes = []  # (lo, hi, restrictions g, entry indices of the permuted copies (g, n_K))
        order, idxs = [], []
        for key in sorted(set(keys), key=lambda k: (len(k), k)):
            K = np.array([k for k, kk in enumerate(keys) if kk == key])
            atoms = np.flatnonzero(np.isin(orbit, key)) if key else np.zeros(0, int)
            _, reps, idx = np.unique(perms[:, atoms], axis=0, return_index=True, return_inverse=True)
            lo = sum(len(k) for k in order)
            self.classes.append((lo, lo + len(K), len(reps), q[reps][:, K]))
            order.append(K)
            idxs.append(idx.reshape(-1))
        order = np.concatenate(order)
        self.pi, self.pj = torch.as_tensor(i[order], device=dev), torch.as_tensor(j[order], device=dev)
        # spreading the classes' restrictions over p and marginalising back are one GEMM each with the 0/1
        # selection matrix S (P, G): S[p, offset_c + k] = 1 when permutation p restricts to k in class c
        offs = np.cumsum([0] + [c[2] for c in self.classes])
        S = torch.zeros(P, int(offs[-1]), dtype=f64, device=dev)
        for idx, o in zip(idxs, offs[:-1]):
            S[torch.arange(P, device=dev), int(o) + torch.as_tensor(idx, device=dev)] = 1.0
        self.S, self.St, self.offsets = S, S.T.contiguous(), [int(o) for o in offs]
        # training points in blocks of ``block`` (None: all), which bounds the (P, 2, m, B) work arrays; per block
        # and class the stacked permuted copies [d; w] (g * 2 * m, n_K) and, transposed, for the back-products
        self.blocks = []
        step = M if block is None else max(1, int(block))
        for b0 in range(0, M, step):
            sl = slice(b0, min(M, b0 + step))
            DWs = []
            for lo, hi, g, qs in self.classes:
                DW = torch.stack([d[sl][:, qs].transpose(0, 1), w[sl][:, qs].transpose(0, 1)], 1)  # (g, 2, m, n_K)
                DW = DW.reshape(-1, hi - lo)
                DWs.append((DW.contiguous(), DW.T.contiguous()))
            self.blocks.append((sl.stop - sl.start, DWs, (d[sl] * d[sl]).sum(1), (d[sl] * w[sl]).sum(1),
                                None if alpha is None else alpha[sl]))  # |P_p d_b|² = |d_b|², d_b·w_b
        self.flops_ratio = sum((c[1] - c[0]) * c[2] for c in self.classes) / float(P * d.shape[1])

    def __call__(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B,) and forces (B, N, 3) of positions R (B, N, 3) Å (float64 inside, R's dtype out)."""
        Rt = R.to(self.device, torch.float64).transpose(0, 1)  # (N, B, 3)
        diff = Rt[self.pi] - Rt[self.pj]  # (D, B, 3), entries in class order
        x = torch.rsqrt((diff * diff).sum(-1))  # the descriptor (inverse distances), (D, B)
        B, P, G, sig = x.shape[1], self.P, self.offsets[-1], self.sigma
        x_sq5 = 5.0 * (x * x).sum(0)
        ln_k = math.log(5.0 / (3.0 * sig ** 3))
        T = x.new_zeros(B)
        y = x.new_zeros(x.shape)
        csum = x.new_zeros(B)
        g0 = self.classes[0][2]
        for m, DWs, d_sq, t, alpha in self.blocks:
            # x·(copies) over each class's few restrictions, then spread over p (one GEMM with S); arrays are
            # (P, 2, m, B): p leading, so spreading and marginalising are GEMMs with S over the rows
            Z = x.new_empty(G * 2 * m, B)
            for (lo, hi, g, _), o, (DW, _) in zip(self.classes, self.offsets, DWs):
                torch.mm(DW, x[lo:hi], out=Z[o * 2 * m:(o + g) * 2 * m])
            dot = (self.S @ Z.view(G, 2 * m * B)).view(P, 2, m, B)
            dotD, sd = dot[:, 0], dot[:, 1]
            # Matérn 5/2 in r = √5 |x - P_p d_b|: base = 5/(3σ³) e^{-r/σ}, in few passes over the arrays
            r = dotD.mul_(-10.0).add_(5.0 * d_sq[:, None] + x_sq5).clamp_min_(0.0).sqrt_()
            e = torch.mul(r, -1.0 / sig).add_(ln_k).exp_()
            sd.sub_(t[:, None]).mul_(5.0 / sig)  # (x·P_p w_b - d_b·w_b) 5/σ
            AC = x.new_empty(P, 2, m, B)  # coefficients of the permuted d (c) and of the permuted w (A)
            A, c = torch.mul(e, r.add(sig), out=AC[:, 1]), torch.mul(e, sd, out=AC[:, 0])
            W = A * sd
            if alpha is not None:
                al = alpha[:, None]
                c.addcmul_(A, al)
                W.addcmul_(r.add(3.0 * sig).mul_(r).add_(3.0 * sig * sig).mul_(e), al)  # Matérn value
            T.add_(W.sum((0, 1)), alpha=sig / 5.0)
            Mg = (self.St @ AC.view(P, -1)).view(G, 2 * m, B)  # marginalised over p onto every restriction
            # Σ_p c: every p restricts to exactly one restriction of a class, so the first class's rows hold it
            csum.add_(Mg[:g0, :m].sum((0, 1)))
            for (lo, hi, g, _), o, (_, DWt) in zip(self.classes, self.offsets, DWs):  # back-products per class
                y[lo:hi].addmm_(DWt, Mg[o:o + g].view(g * 2 * m, B))
        y.addcmul_(x, csum, value=-1.0)
        gr = y.mul_(x * x * x).mul_(-self.std).unsqueeze(-1) * diff  # J^T y on atom i; atom j gets the opposite
        F = torch.zeros_like(Rt).index_add_(0, self.pi, gr).index_add_(0, self.pj, gr, alpha=-1.0)
        E = self.c - self.std * T
        return E.to(R.dtype), F.transpose(0, 1).to(R.dtype)


def _orbits(perms: np.ndarray) -> np.ndarray:
    """Orbit label per atom under the permutations (-1 for atoms every permutation fixes)."""
    n = perms.shape[1]
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for p in perms:
        for a in range(n):
            ra, rb = find(a), find(int(p[a]))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    root = np.array([find(a) for a in range(n)])
    moved = (perms != np.arange(n)[None]).any(0)
    return np.where(moved, root, -1)


def run_md(model, R0: np.ndarray, n_steps: int, n_replicas: int = 1, save_every: int = 10,
           dt_fs: float = 0.5, temperature: float = 300.0, friction_per_ps: float = 1.0, seed: int = 0,
           max_bond_change: float = 0.5, progress: bool = True, fast: bool = True,
           exchange: Any = None, hydrogen_mass: float | None = None) -> Trajectory:
    """BAOAB Langevin MD of ``n_replicas`` copies on the model's surface (forcefield.langevin.simulate).

    R0 is one geometry (N, 3) or one per replica (B, N, 3), in Å. A replica is stopped when a covalent bond
    (from the first geometry) changes by more than ``max_bond_change`` Å (the MDsim stability rule).
    Runs on the model's device in float64; all replicas are one batch per force call. ``fast``: forces from
    :class:`SymmetryFactoredPredictor` (same values as ``model.predict_torch``, far less arithmetic).
    ``exchange``: a :class:`forcefield.remd.TemperatureLadders` over the B replicas (temperature replica
    exchange; ``temperature`` is then ignored and every saved frame records its temperature).
    ``hydrogen_mass``: amu per hydrogen by mass repartitioning (:func:`forcefield.elements.repartitioned_masses`;
    same configurational ensemble, ~2x longer stable time step); None keeps the true masses.
    """
    from ..geometry import covalent_bonds

    R0 = np.asarray(R0, dtype=float)
    if R0.ndim == 2:
        R0 = np.repeat(R0[None], n_replicas, axis=0)
    if R0.ndim != 3 or R0.shape[1:] != (model.n_atoms, 3):
        raise InputError(f"start geometry must be ({model.n_atoms}, 3) or (B, {model.n_atoms}, 3), got {R0.shape}")
    if not np.isfinite(R0).all():
        raise InputError("start geometry contains NaN or infinite values")
    dev = model.device
    bonds = covalent_bonds(R0[0], model.z)
    ref = torch.as_tensor(np.linalg.norm(R0[0][bonds[:, 0]] - R0[0][bonds[:, 1]], axis=-1), device=dev)
    bi = torch.as_tensor(bonds[:, 0], device=dev)
    bj = torch.as_tensor(bonds[:, 1], device=dev)

    def check(x: torch.Tensor) -> torch.Tensor:
        if len(bonds) == 0:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        d = torch.linalg.vector_norm(x[:, bi] - x[:, bj], dim=-1)
        return ((d - ref).abs() > max_bond_change).any(1)

    force_fn = SymmetryFactoredPredictor(model) if fast else model.predict_torch

    m = masses(model.z) if hydrogen_mass is None else repartitioned_masses(model.z, bonds, hydrogen_mass)
    return simulate(force_fn, torch.as_tensor(R0, dtype=torch.float64, device=dev),
                    torch.as_tensor(m), n_steps=n_steps, save_every=save_every, dt_fs=dt_fs,
                    temperature=temperature, friction_per_ps=friction_per_ps, seed=seed, check_fn=check,
                    progress=progress, desc="kernel-FF MD", exchange=exchange)


class ReferenceMDConfig(Config):
    """Settings of :func:`sample_reference`.

    replicas : walkers, all one batch; with ``temperatures`` > 1 they form ``replicas / temperatures``
    independent replica-exchange ladders from the target temperature to ``max_temperature`` (geometric), with
    an exchange sweep every ``exchange_every`` steps, and the reference keeps the frames saved at the target.
    frames, save_every : frames saved per walker, and steps between them (fs: ``timestep_fs``).
    hydrogen_mass : amu by mass repartitioning (same configurational ensemble, longer stable steps; None: true
    masses). discard_ps : a walker stopped by the stability rule loses the frames saved this long before the stop.
    Defaults: 65 ps per walker, a frame and an exchange sweep every 50 fs, 2 fs steps with 3 amu hydrogens
    (alanine dipeptide: at 2.5 fs 12 of 33 walkers broke a bond within 65 ps).
    """

    replicas: int = Field(33, gt=0)
    frames: int = Field(1300, gt=0)
    save_every: int = Field(25, gt=0)
    timestep_fs: float = Field(2.0, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    temperatures: int = Field(3, gt=0)
    max_temperature: float = Field(450.0, gt=0)
    exchange_every: int = Field(25, gt=0)
    hydrogen_mass: float | None = Field(3.0, gt=0)
    discard_ps: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _ladders(self) -> "ReferenceMDConfig":
        if self.replicas % self.temperatures:
            raise ValueError(f"replicas ({self.replicas}) must be a multiple of temperatures ({self.temperatures})")
        return self


def sample_reference(model, starts: np.ndarray, config: ReferenceMDConfig | None = None, *,
                     temperature: float = 300.0, seed: int = 0, progress: bool = True
                     ) -> tuple[Dataset, dict[str, Any]]:
    """The AA reference ensemble at ``temperature`` (K) by kernel-FF Langevin MD (:func:`run_md`).

    With ``config.temperatures`` > 1 the walkers form temperature replica-exchange ladders
    (:class:`forcefield.remd.TemperatureLadders`) and only frames saved at ``temperature`` are kept: a
    canonical sample that crosses barriers a plain run at that temperature rarely crosses. A walker stopped
    by the stability rule keeps only the frames saved ``discard_ps`` before its stop (the approach to a
    blow-up is no sample of the ensemble). ``starts`` (B, N, 3) Å, one per walker.

    Returns the frames (energies and forces are the model's; ``extra['replica_frames']`` counts them per
    walker, in walker order) and figures: ``frames``, ``stable_fraction``, ``unstable_walkers``,
    ``ps_per_replica``, ``ps_at_temperature``, ``steps_per_s``, ``replica_steps_per_s`` and, with exchange,
    ``temperatures`` and ``exchange_acceptance`` per neighbour pair.
    """
    import time

    from ..remd import TemperatureLadders

    c = config or ReferenceMDConfig()
    starts = np.asarray(starts, dtype=float)
    if starts.ndim != 3 or len(starts) != c.replicas:
        raise InputError(f"sample_reference: need {c.replicas} start geometries (B, N, 3), got {starts.shape}")
    exchange = None
    if c.temperatures > 1:
        exchange = TemperatureLadders.geometric(temperature, c.max_temperature, c.temperatures, c.replicas,
                                                c.exchange_every, seed=seed, what="sample_reference: ")
    steps = c.frames * c.save_every
    t0 = time.perf_counter()
    traj = run_md(model, starts, n_steps=steps, save_every=c.save_every, dt_fs=c.timestep_fs,
                  temperature=temperature, friction_per_ps=c.friction_per_ps, seed=seed, progress=progress,
                  exchange=exchange, hydrogen_mass=c.hydrogen_mass)
    wall = time.perf_counter() - t0
    drop = math.ceil(c.discard_ps * 1000.0 / (c.save_every * c.timestep_fs))
    stopped = {b for b, _, _ in traj.stopped}
    parts, counts = [], []
    for b in range(len(starts)):
        idx = traj.at_temperature(b, temperature)
        if b in stopped:
            idx = idx[idx < traj.n_valid[b] - drop]
        if len(idx):
            parts.append(Dataset(R=traj.R[idx, b], z=model.z, E=traj.E[idx, b], F=traj.F[idx, b]))
            counts.append(len(idx))
    if not parts:
        raise InputError("every kernel-FF MD walker became unstable before saving a frame at the target "
                         "temperature; train the force field on more frames")
    ref = Dataset.concatenate(parts)
    ref.theory, ref.extra = "kernel force field MD", {"replica_frames": np.asarray(counts, dtype=np.int64)}
    info: dict[str, Any] = {
        "frames": len(ref), "stable_fraction": float(np.mean(traj.n_valid == c.frames)),
        "unstable_walkers": len(stopped), "ps_per_replica": steps * c.timestep_fs / 1000,
        "ps_at_temperature": len(ref) * c.save_every * c.timestep_fs / 1000,
        "steps_per_s": steps / wall,  # all walkers advance together
        "replica_steps_per_s": c.replicas * steps / wall}
    if exchange is not None:
        info["temperatures"] = [float(t) for t in exchange.temperatures]
        info["exchange_acceptance"] = [float(a) for a in exchange.acceptance]
    return ref, info


def trajectory_to_dataset(traj: Trajectory, z: np.ndarray, replica: int | None = None, name: str = "kernel MD"
                          ) -> Dataset:
    """Valid frames of one replica (or of all, concatenated) as a :class:`Dataset`."""
    reps = range(traj.R.shape[1]) if replica is None else [replica]
    parts = []
    for b in reps:
        R, F, E = traj.replica(b)
        if len(R):
            parts.append(Dataset(R=R, z=z, E=E, F=F, name=name, theory="kernel force field"))
    if not parts:
        raise InputError("the MD run saved no valid frames")
    return Dataset.concatenate(parts)
