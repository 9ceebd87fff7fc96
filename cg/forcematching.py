"""The force-matching recipe, written once: (mapping, AA reference, config) → CG model.

Steps: force map (per-bead sum or the least-noise consistent map) → mapped positions and forces →
Boltzmann-inversion priors (when there are enough frames and CG bonds) → priors + a fresh network →
force matching with the shared Lightning trainer (contiguous train/validation blocks per replica). The CLI
(``cgwb cg train``), the pipeline (``cgwb run``), the benchmarks and the notebooks all call
:func:`fit_cg_model`; same inputs and seed give the same model.

Units: Å, kcal/mol, kcal/mol/Å, K.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import Field

from forcefield.config import Config
from forcefield.dataset import Dataset
from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .mapping import Mapping
from .potential import CGPotential, build_potential
from .priors import Priors


class ForceMatchingConfig(Config):
    """Settings of :func:`fit_cg_model`.

    network : ``features`` (MLP on internal coordinates), ``schnet``, ``e3nn`` (equivariant) or ``none``
        (priors only). hidden : width (default 128 features, 32 schnet). force_map : ``sum`` (atom forces
        summed per bead) or ``optimal`` (least-noise consistent map). constraints : the reference MD's bond
        constraints (``hbonds``: the optimal map keeps each X-H pair at one weight, so constraint forces cancel).
    lipschitz : spectral-norm bound of every linear layer of the network (CGnet's Lipschitz regularisation;
        None: off).
    domain_gate : switch the network off where the reference has (almost) no frames, by CG torsion
        (:mod:`cg.domain`): there the model is its priors, so the network cannot dig spurious wells where
        it was never fitted. domain_fraction : the fraction of the frames per 5° torsion bin above which the
        network acts fully (off below a tenth of it).
    ensemble : networks trained independently (seeds ``seed``, ``seed + 1``, ...) and averaged
        (:func:`cg.nets.ensemble.merge_feature_nets`: one exact wider feature network); lowers the
        seed-to-seed spread of the fitted free energy at ``ensemble`` times the training cost
        (``network = "features"`` only).
    """

    network: Literal["features", "schnet", "e3nn", "none"] = "features"
    hidden: int | None = Field(None, gt=0)
    layers: int = Field(3, gt=0)
    n_rbf: int = Field(16, gt=0)
    interactions: int = Field(2, gt=0)
    cutoff: float = Field(10.0, gt=0)
    n_fourier: int = Field(6, ge=1)
    epochs: int = Field(200, gt=0)
    patience: int = Field(25, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    force_map: Literal["sum", "optimal"] = "sum"
    constraints: Literal["none", "hbonds"] = "none"
    min_prior_frames: int = Field(20, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    lipschitz: float | None = Field(None, gt=0)
    domain_gate: bool = True
    domain_fraction: float = Field(5e-4, gt=0, lt=1)
    ensemble: int = Field(1, ge=1)

    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the chosen network's constructor."""
        if self.network == "schnet":
            return dict(hidden=self.hidden or 32, n_rbf=self.n_rbf, n_interactions=self.interactions,
                        cutoff=self.cutoff)
        if self.network == "features":
            return dict(hidden=self.hidden or 128, layers=self.layers)
        if self.network == "e3nn":
            return dict(cutoff=self.cutoff, **({"hidden": self.hidden} if self.hidden else {}))
        return {}


@dataclass
class CGModel:
    """Result of :func:`fit_cg_model`: the potential, the mapping actually used (with its force map), the
    training history and the config. ``save(path)`` writes ``path`` (the potential) and ``path.json``."""

    potential: CGPotential
    mapping: Mapping
    config: ForceMatchingConfig
    history: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        self.potential.save(str(path))
        meta = {"format": "cgworkbench-cg-model", "config": self.config.model_dump(), "history": self.history,
                "info": self.info, "mapping": self.mapping.to_dict()}
        with atomic_path(_meta(path)) as tmp:
            tmp.write_text(json.dumps(meta, indent=1, default=float))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "CGModel":
        path = Path(path)
        pot = CGPotential.load(str(path), device=device)
        mp = _meta(path)
        if not mp.exists():
            raise InputError(f"{path}: no {mp.name} beside it (a bare potential; load it with CGPotential.load)")
        meta = json.loads(mp.read_text())
        return cls(pot, Mapping.from_dict(meta["mapping"], source=str(mp)),
                   ForceMatchingConfig.build(meta["config"], source=str(mp)), meta.get("history", {}),
                   meta.get("info", {}))


def _meta(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def fit_cg_model(mapping: Mapping, reference: Dataset, config: ForceMatchingConfig | None = None, *,
                 temperature: float = 300.0, lengths: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, checkpoint: str | os.PathLike | None = None,
                 resume: bool = True, progress: bool = True, log: Callable[[str], None] | None = None) -> CGModel:
    """Fit a CG potential (priors + network) to the mapped forces of an AA reference.

    Parameters
    ----------
    mapping : the CG map (its force map is replaced by the optimal one when ``config.force_map == "optimal"``).
    reference : AA frames with forces (``R`` Å, ``F`` kcal/mol/Å).
    temperature : K, for Boltzmann inversion of the priors.
    lengths : frames of each replica/trajectory in ``reference`` (validation blocks are cut per replica);
        default: ``reference.extra['replica_frames']`` or one trajectory.
    checkpoint, resume : training checkpoint file; an existing one is resumed.
    """
    cfg = config or ForceMatchingConfig()
    log = log or (lambda s: None)
    if reference.F is None:
        raise InputError(f"{reference.name or 'reference'}: no forces 'F'; force matching needs them")
    if reference.n_atoms != mapping.n_atoms:
        raise InputError(f"reference has {reference.n_atoms} atoms, the mapping {mapping.n_atoms}")
    if lengths is None:
        from forcefield.splits import trajectory_lengths

        lengths = trajectory_lengths(reference.extra, len(reference))
    m = mapping
    if cfg.force_map == "optimal":
        if len(reference) < 2:
            raise InputError("force_map = 'optimal' needs at least 2 frames with forces")
        pairs = mapping.hbond_pairs() if cfg.constraints == "hbonds" else None
        m = mapping.with_optimal_forces(reference.F, constrained=pairs)
        log("least-noise (optimal) force map" + (" with X-H constraints" if pairs is not None else ""))
    R, F = m.map_positions(reference.R), m.map_forces(reference.F)
    info: dict[str, Any] = {"frames": len(R), "force_map": cfg.force_map,
                            "mapped_force_rms": float(np.sqrt((F ** 2).mean()))}
    if len(R) >= cfg.min_prior_frames and len(m.bonds):
        pri = Priors.fit(R, m.bonds, temperature, n_fourier=cfg.n_fourier, names=list(m.bead_types))
    else:  # Boltzmann inversion needs histograms (and bonds); a few frames cannot give them
        log(f"{len(R)} frames, {len(m.bonds)} CG bonds: no Boltzmann-inversion priors, network only")
        pri = None
        if cfg.network == "none":
            raise InputError("network = 'none' needs priors, but there are too few frames or no CG bonds")
    torch.manual_seed(seed)
    net = False if cfg.network == "none" else cfg.network
    from .potential import bead_types

    # bead types (residue names for Cα beads, bead names otherwise) share embeddings in schnet / e3nn
    pot = build_potential(pri, m.names, m.masses, m.bonds, types=bead_types(list(m.bead_types)),
                          temperature=temperature, device=device, network=net, reference=R, **cfg.net_kwargs())
    hist: dict[str, Any] = {}
    if pot.net is not None:
        from .train import train_force_matching

        if cfg.ensemble > 1 and cfg.network != "features":
            raise InputError(f"ensemble = {cfg.ensemble} needs network = 'features' (got {cfg.network!r})")
        nets, results = [], []
        for k in range(cfg.ensemble):
            if k:  # a fresh member: same priors and feature scaling, its own initialisation and batch order
                torch.manual_seed(seed + k)
                pot.net = build_potential(None, m.names, m.masses, m.bonds, temperature=temperature, device=device,
                                          network=net, reference=R, **cfg.net_kwargs()).net
            ck = checkpoint if checkpoint is None or not k else f"{checkpoint}.member{k}"
            res = train_force_matching(pot, R, F, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                       val_fraction=cfg.val_fraction, patience=cfg.patience, seed=seed + k,
                                       device=device, checkpoint=ck, resume=resume, progress=progress,
                                       max_seconds=cfg.max_seconds, lengths=lengths, lipschitz=cfg.lipschitz)
            nets.append(pot.net)
            results.append(res)
            if cfg.ensemble > 1:
                log(f"ensemble member {k + 1}/{cfg.ensemble}: validation force RMSE {res.best_val_rmse:.3f}")
        res = results[0]
        hist = res.as_dict()
        info.update(best_val_rmse=float(res.best_val_rmse), prior_val_rmse=float(res.prior_val_rmse),
                    epochs=len(res.val_rmse), best_epoch=int(res.best_epoch) + 1,
                    seconds_per_epoch=float(np.mean(res.epoch_seconds)) if res.epoch_seconds else float("nan"),
                    n_train=int(res.n_train), n_val=int(res.n_val))
        if cfg.ensemble > 1:
            from .nets.ensemble import merge_feature_nets

            pot.net = merge_feature_nets(nets)
            info.update(ensemble=cfg.ensemble, member_val_rmse=[float(r.best_val_rmse) for r in results],
                        epochs=int(sum(len(r.val_rmse) for r in results)))
            # the ensemble's own validation error, on the members' (shared) validation blocks
            from forcefield.splits import block_split

            _, va = block_split(len(R), max(cfg.val_fraction, 1e-9), lengths, min_val=1)
            info["best_val_rmse"] = pot.force_rmse(R[va], F[va])
        if cfg.domain_gate and pri is not None and len(pri.dih_idx):
            from .domain import gate_network

            info.update(gate_network(pot, R, F, hi=cfg.domain_fraction))
            log(f"domain gate: {100 * info['domain_frames_outside']:.2f} % of the reference frames outside; "
                f"force RMSE {info['domain_force_rmse_ungated']:.3f} -> {info['domain_force_rmse_gated']:.3f}")
    return CGModel(pot, m, cfg, hist, info)
