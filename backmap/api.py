"""Public API: :class:`Backmapper` (train, sample, save, load) and :func:`evaluate`.

Example
-------
>>> from cg import Mapping
>>> bm = Backmapper(mapping, device="cpu").fit(aa_universe, epochs=30)
>>> aa = bm.sample(cg_universe, n_samples=10)        # frames: CG frame f, sample s -> f * 10 + s
>>> backmap.evaluate(reference_universe, aa)["rmsd_heavy"]   # (reference, test), as every comparison
>>> bm.save("model.pt"); bm = Backmapper.load("model.pt")

Units: Å (MDAnalysis positions are Å as well).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .losses import BackmapLoss, GeometryTerms, equivalent_groups
from .model import CGVAE, ModelConfig
from .sample import reconstruct_positions, relax_callable, relax_openmm, sample_positions
from .train import History, TrainConfig, train_model
from .universe import aa_arrays, cg_positions, universe_from_pdb_text

FORMAT = "cgworkbench-backmapper"


def _hosts(mapping: Any, bonds: np.ndarray, R0: np.ndarray) -> np.ndarray:
    """Bead of every atom; atoms in no bead take the bead of the nearest (by bonds, then distance) atom."""
    from forcefield.topology import neighbours

    host = mapping.assignment().copy()
    adj = neighbours(bonds, mapping.n_atoms)
    changed = True
    while changed and (host < 0).any():
        changed = False
        for a in np.flatnonzero(host < 0):
            hs = [host[b] for b in adj[a] if host[b] >= 0]
            if hs:
                host[a] = hs[0]
                changed = True
    if (host < 0).any():
        X0 = mapping.map_positions(R0)
        for a in np.flatnonzero(host < 0):
            host[a] = int(np.argmin(np.linalg.norm(X0 - R0[a], axis=1)))
    return host


class Backmapper:
    """Generative backmapping from CG beads of ``mapping`` to all atoms (an equivariant conditional VAE).

    Parameters
    ----------
    mapping : :class:`cg.Mapping` (any bead count; ``com`` or ``cog`` weighting; atoms in no bead are allowed
        and attached to the bead of their nearest bonded atom).
    hidden, latent, layers, enc_layers, cutoff : network sizes (see :class:`backmap.model.ModelConfig`).
    device : torch device for training and sampling.
    train_config : :class:`backmap.train.TrainConfig`, or keyword overrides in ``**train``.
    decoder : ``"vae"`` (the conditional VAE, default) or ``"e3nn"`` (:mod:`backmap.e3nn_decoder`, an e3nn
        generator keyed by residue/atom names; ``decoder_options``: its :class:`DecoderConfig` fields and
        ``max_seconds``; the network sizes above apply to the VAE only).
    """

    def __init__(self, mapping: Any, hidden: int = 64, latent: int = 16, layers: int = 3, enc_layers: int = 2,
                 cutoff: float | None = None, device: str | torch.device = "cpu",
                 train_config: TrainConfig | None = None, decoder: str = "vae", decoder_options: dict | None = None,
                 **train: Any) -> None:
        if decoder not in ("vae", "e3nn"):  # "e3nn": backmap.e3nn_decoder (options: its DecoderConfig fields)
            raise InputError(f"unknown decoder {decoder!r}; expected 'vae' or 'e3nn'")
        self.decoder, self.decoder_options = decoder, dict(decoder_options or {})
        self.mapping = mapping
        self.net_kw = {"hidden": hidden, "latent": latent, "layers": layers, "enc_layers": enc_layers,
                       "cutoff": cutoff}
        self.device = torch.device(device)
        self.train_config = train_config or TrainConfig(**train)
        self.model: CGVAE | None = None
        self.z: np.ndarray | None = None
        self.topology: str | None = None
        self.bonds: np.ndarray | None = None
        self.history = History()

    # ------------------------------------------------------------------ checks
    def _check_aa(self, R: np.ndarray, z: np.ndarray, source: str) -> None:
        n = self.mapping.n_atoms
        if R.ndim != 3 or R.shape[1] != n:
            raise InputError(f"{source}: {R.shape[1] if R.ndim == 3 else '?'} atoms, but the mapping has {n} atoms")
        if self.z is not None and not np.array_equal(np.asarray(z), self.z):
            a = int(np.flatnonzero(np.asarray(z) != self.z)[0])
            raise InputError(f"{source}: atom {a} has atomic number {int(z[a])}, the model expects {int(self.z[a])}"
                             " (topology does not match the trained model)")
        if not np.isfinite(R).all():
            raise InputError(f"{source}: frame {int(np.flatnonzero(~np.isfinite(R).all(axis=(1, 2)))[0])} is not finite")

    def _require_model(self) -> CGVAE:
        if self.model is None:
            raise InputError("this Backmapper is not trained yet: call fit() or Backmapper.load()")
        return self.model

    # ------------------------------------------------------------------ training
    def fit(self, aa: Any, epochs: int | None = None, checkpoint: str | os.PathLike | None = None,
            resume: bool = True, progress: bool = True, max_frames: int | None = None,
            lengths: Any = None, log_dir: str | os.PathLike | None = None, devices: Any = None,
            accelerator: str | None = None, strategy: Any = "auto", num_nodes: int = 1) -> "Backmapper":
        """Train on an AA trajectory (MDAnalysis Universe or :class:`forcefield.Dataset`, positions in Å).

        ``checkpoint``: file written every epoch; an existing one is resumed (``resume=True``).
        ``max_frames``: use at most this many frames, evenly spaced. ``lengths``: frames of each trajectory
        (replica) in order (default: a Dataset's ``replica_frames``, else one trajectory); the last part of
        each validates. ``log_dir``, ``devices``, ``accelerator``, ``strategy``, ``num_nodes``: see
        :func:`backmap.train.train_model`. Returns ``self``.
        """
        from forcefield.splits import trajectory_lengths

        R, z, top = aa_arrays(aa, "fit")
        self._check_aa(R, z, "fit")
        if lengths is None:
            lengths = trajectory_lengths(getattr(aa, "extra", None) or {}, len(R))
        if max_frames is not None and len(R) > max_frames:
            keep = np.linspace(0, len(R) - 1, max_frames).round().astype(int)
            R = R[keep]
            lengths = np.bincount(np.searchsorted(np.cumsum(lengths), keep, side="right"), minlength=len(lengths))
        if len(R) < 2:
            raise InputError(f"fit: {len(R)} frame(s); at least 2 are needed (training and validation)")
        from forcefield.geometry import covalent_bonds

        m = self.mapping
        bonds = m.atom_bonds if m.atom_bonds is not None and len(m.atom_bonds) else covalent_bonds(R[0], z)
        self.z, self.topology, self.bonds = np.asarray(z, dtype=np.int64), top, np.asarray(bonds, dtype=np.int64)
        X = m.map_positions(R)
        c = X.mean(1, keepdims=True)
        R, X = R - c, X - c
        host = _hosts(m, self.bonds, R[0])
        C = m.matrix()
        weights = np.array([C[host[a], a] for a in range(m.n_atoms)])
        dmax = float(np.linalg.norm(X[:, :, None] - X[:, None], axis=-1).max()) if m.n_beads > 1 else 1.0
        rbf_max = float(self.net_kw["cutoff"] or max(5.0, np.ceil(1.2 * dmax)))
        cfg = ModelConfig(n_atoms=m.n_atoms, n_beads=m.n_beads, rbf_max=rbf_max, **self.net_kw)
        tc = self.train_config if epochs is None else TrainConfig(**{**self.train_config.to_dict(), "epochs": epochs})
        self.train_config = tc
        if self.decoder == "e3nn":
            from .e3nn_decoder import fit_e3nn_decoder

            self.model, self.history = fit_e3nn_decoder(m, R, X, host, weights, self.bonds, top, self.z, tc,
                                                        self.decoder_options, self.device, checkpoint, resume,
                                                        progress, lengths)
            return self
        torch.manual_seed(tc.seed)
        self.model = CGVAE(cfg, host, weights)
        loss = BackmapLoss(GeometryTerms.build(self.bonds, R, tc.clash_distance), tc.beta, tc.gamma_bond,
                           tc.gamma_angle, tc.gamma_clash, tc.gamma_prior,
                           groups=equivalent_groups(self.bonds, self.z) if tc.match_equivalent else None)
        self.history = train_model(self.model, loss, R, X, tc, self.device, checkpoint, resume, progress,
                                   extra={"mapping": m.to_dict()}, lengths=lengths, log_dir=log_dir,
                                   devices=devices, accelerator=accelerator, strategy=strategy, num_nodes=num_nodes)
        return self

    # ------------------------------------------------------------------ generation
    def sample_positions(self, cg: Any, n_samples: int = 1, temperature: float = 1.0, seed: int | None = None,
                         batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Prior samples as an array (F, n_samples, N, 3), Å, for a CG Universe, Dataset or array (F, n, 3)."""
        model = self._require_model()
        X = cg_positions(cg, self.mapping.n_beads, self.mapping.names)
        return sample_positions(model, X, n_samples, temperature, batch_size, seed, self.device, progress)

    def reconstruct_positions(self, aa: Any, sample: bool = False) -> np.ndarray:
        """Decode the posterior of true AA frames (mean latent, or a draw): (F, N, 3), Å."""
        model = self._require_model()
        R, z, _ = aa_arrays(aa, "reconstruct") if not isinstance(aa, np.ndarray) else (aa, self.z, None)
        self._check_aa(np.asarray(R), z, "reconstruct")
        return reconstruct_positions(model, R, self.mapping.map_positions(R), sample, device=self.device)

    def relax(self, R: np.ndarray, force_fn: Any = None, k_restraint: float = 10.0, hold: str = "heavy",
              **kw: Any) -> np.ndarray:
        """Restrained relaxation of structures (..., N, 3): OpenMM amber14 on the stored topology, or a
        callable force provider ``r -> (E, F)``. ``hold``: ``"heavy"`` holds every heavy atom near its decoded
        position; ``"beads"`` only the atoms the CG beads are made of (the CG trace stays, the force field
        places the rest)."""
        if hold not in ("heavy", "beads"):
            raise InputError(f"relax: hold must be 'heavy' or 'beads', got {hold!r}")
        if hold == "beads":
            kw["held"] = np.flatnonzero(np.abs(self.mapping.matrix()).sum(0) > 0)
        if force_fn is not None:
            return relax_callable(R, force_fn, self.z, k_restraint, **kw)
        if self.topology is None:
            raise InputError("relax: no topology stored with the model (trained from a Dataset without PDB text); "
                             "pass force_fn")
        return relax_openmm(R, self.topology, self.z, k_restraint, **kw)

    def sample(self, cg: Any, n_samples: int = 1, temperature: float = 1.0, seed: int | None = None,
               relax: bool | Any = False, topology: Any = None, progress: bool = False, **relax_kw: Any) -> Any:
        """Backmap every frame of a CG trajectory into an AA MDAnalysis Universe (in memory).

        Parameters
        ----------
        cg : CG Universe (one atom per bead, in the mapping's bead order), Dataset or array (F, n, 3), Å.
        n_samples : samples drawn per CG frame. Frame ``f * n_samples + s`` of the result is sample ``s`` of
            CG frame ``f``.
        temperature : scale of the prior's standard deviation (1 = the trained prior).
        relax : False, True (OpenMM amber14 restrained minimisation) or a callable force provider.
        topology : AA Universe/PDB giving the topology, when none was stored with the model.
        """
        model = self._require_model()
        R = self.sample_positions(cg, n_samples, temperature, seed, progress=progress)
        R = R.reshape(-1, model.cfg.n_atoms, 3)
        if relax is not False and relax is not None:
            R = self.relax(R, None if relax is True else relax, **relax_kw)
        if topology is not None:
            from forcefield.universe import open_universe
            import MDAnalysis as mda
            from MDAnalysis.coordinates.memory import MemoryReader

            u = open_universe(topology) if isinstance(topology, (str, os.PathLike)) else mda.Merge(topology.atoms)
            if u.atoms.n_atoms != model.cfg.n_atoms:
                raise InputError(f"topology has {u.atoms.n_atoms} atoms, the model {model.cfg.n_atoms}")
            u.load_new(R.astype(np.float32), format=MemoryReader, order="fac")
            return u
        if self.topology is None:
            from forcefield.dataset import Dataset

            return Dataset(R=R, z=self.z).to_universe()
        return universe_from_pdb_text(self.topology, R)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.pt`` file (tensors, plus JSON strings for the mapping, settings and topology)."""
        model = self._require_model()
        meta = {"format": FORMAT, "version": 1, "model": model.cfg.to_dict(), "net_kw": self.net_kw,
                "train": self.train_config.to_dict(), "mapping": self.mapping.to_dict(),
                "z": self.z.tolist(), "bonds": self.bonds.tolist(), "topology": self.topology,
                "history": {"train": self.history.train, "val": self.history.val},
                "decoder": self.decoder, "decoder_options": self.decoder_options}
        path = Path(path)
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"meta": json.dumps(meta), "state_dict": {k: v.detach().cpu() for k, v in
                                                                   model.state_dict().items()}}, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Backmapper":
        """Read a model written by :meth:`save` (``torch.load(weights_only=True)``; no pickled code)."""
        from cg.mapping import Mapping

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(d["meta"])
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable backmapping model ({e})") from e
        if meta.get("format") != FORMAT:
            raise InputError(f"{path}: not a backmapping model (format {meta.get('format')!r})")
        bm = cls(Mapping.from_dict(meta["mapping"], str(path)), device=device,
                 train_config=TrainConfig(**meta["train"]), **{})
        bm.net_kw = meta["net_kw"]
        bm.z, bm.bonds, bm.topology = np.array(meta["z"], dtype=np.int64), np.array(meta["bonds"]).reshape(-1, 2), meta["topology"]
        bm.history = History(meta["history"]["train"], meta["history"]["val"])
        sd = d["state_dict"]
        bm.decoder, bm.decoder_options = meta.get("decoder", "vae"), meta.get("decoder_options", {})
        if bm.decoder == "e3nn":
            from .e3nn_decoder import E3nnDecoder

            bm.model = E3nnDecoder.from_state(meta["model"], sd)
        else:
            bm.model = CGVAE(ModelConfig(**meta["model"]), sd["host"].numpy(), sd["weights"].numpy())
            bm.model.load_state_dict(sd)
        bm.model.to(bm.device).eval()
        return bm


def _frames(x: Any) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    if isinstance(x, np.ndarray):
        return x, None, None
    R, z, top = aa_arrays(x, "evaluate")
    return R, z, top


def evaluate(reference: Any, generated: Any, z: np.ndarray | None = None, energies: bool = False,
             pdb: str | os.PathLike | None = None, clash_distance: float = 2.0, cov_threshold: float = 0.5
             ) -> dict[str, float]:
    """Compare backmapped structures with references (see :mod:`backmap.metrics` for definitions).

    Parameters
    ----------
    reference : AA Universe/Dataset/array (F, N, 3) with the true frames (first, as in every comparison).
    generated : AA Universe/Dataset/array with frames x samples frames (frame-major, as
        :meth:`Backmapper.sample` returns them), or an array (F, S, N, 3).
    z : atomic numbers when both inputs are arrays.
    energies : also report amber14 energies (kcal/mol) of generated and reference structures (needs a
        topology: ``pdb``, or one taken from the inputs).

    Returns
    -------
    dict with ``rmsd_all`` and ``rmsd_heavy`` (symmetry-aware: minimum over the graph automorphisms of the
    reference bond graph), ``rmsd_all_plain`` and ``rmsd_heavy_plain`` (atom order as given),
    ``valid_ratio``, ``graph_edit_ratio``, ``clash_rate``, ``diversity``, ``cov``, ``mat``, ``nan_reasons``
    (why a figure is NaN) and more (``energy_*`` with ``energies=True``).
    """
    from .metrics import compute_metrics
    from .metrics import energies as amber_energies

    G, zg, top_g = _frames(generated)
    Rf, zr, top_r = _frames(reference)
    z = z if z is not None else (zr if zr is not None else zg)
    if z is None:
        raise InputError("evaluate: pass z (atomic numbers) when both inputs are arrays")
    if zg is not None and zr is not None and not np.array_equal(zg, zr):
        raise InputError("evaluate: generated and reference topologies have different elements")
    out = compute_metrics(G, Rf, np.asarray(z), clash_distance, cov_threshold)
    if energies:
        top = pdb or top_r or top_g
        if top is None:
            raise InputError("evaluate: energies need a topology PDB (pdb=...)")
        top = str(top) if not isinstance(top, str) else top
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            if "\n" in top:
                p = Path(d) / "top.pdb"
                p.write_text(top)
                top = str(p)
            Eg = amber_energies(top, np.asarray(G).reshape(-1, len(z), 3))
            Er = amber_energies(top, np.asarray(Rf).reshape(-1, len(z), 3))
        out.update({"energy_mean": float(Eg.mean()), "energy_median": float(np.median(Eg)),
                    "energy_ref_mean": float(Er.mean()), "energy_ref_median": float(np.median(Er))})
    return out
