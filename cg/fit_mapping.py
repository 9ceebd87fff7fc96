"""The mapping recipe, written once: (AA frames, topology, config) → :class:`cg.Mapping`.

``kind``: ``learned`` (the coarse-graining autoencoder, :func:`cg.learn_mapping`), ``preset`` (residue-
and backbone-based maps, :meth:`Mapping.from_preset`), ``selections`` (one MDAnalysis selection per bead) or
``file`` (a saved mapping JSON). The CLI (``cgwb map``) and the pipeline call :func:`fit_mapping`.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from forcefield.config import Config
from forcefield.dataset import Dataset
from forcefield.errors import InputError
from forcefield.universe import bond_indices

from .mapping import Mapping


class MappingConfig(Config):
    """Settings of :func:`fit_mapping` (``n_beads`` and ``epochs`` for ``learned``)."""

    kind: Literal["learned", "preset", "selections", "file"] = "learned"
    n_beads: int = Field(6, ge=2)
    preset: str = "backbone"
    selections: dict[str, str] | None = None
    file: str | None = None
    epochs: int = Field(100, gt=0)
    max_frames: int | None = Field(None, gt=0)


def fit_mapping(reference: Dataset, universe: Any, config: MappingConfig | None = None, *,
                device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
                base_dir: Any = None) -> Mapping:
    """Build or learn the CG map of ``reference`` (frames Å) whose atoms are ``universe.atoms``."""
    cfg = config or MappingConfig()
    if universe.atoms.n_atoms != reference.n_atoms:
        raise InputError(f"topology has {universe.atoms.n_atoms} atoms, the reference {reference.n_atoms}")
    if cfg.kind == "learned":
        from .autoencoder import learn_mapping

        m = learn_mapping(reference, n_beads=cfg.n_beads, epochs=cfg.epochs, device=device, seed=seed,
                          progress=progress, atom_bonds=bond_indices(universe), max_frames=cfg.max_frames)
        m.atom_names = [str(n) for n in universe.atoms.names]
    elif cfg.kind == "preset":
        m = Mapping.from_preset(universe.atoms, cfg.preset)
    elif cfg.kind == "selections":
        if not cfg.selections:
            raise InputError("mapping.kind = 'selections' needs a selections table")
        m = Mapping.from_selections(universe.atoms, cfg.selections)
    else:
        if not cfg.file:
            raise InputError("mapping.kind = 'file' needs mapping.file")
        from pathlib import Path

        p = Path(cfg.file) if base_dir is None or Path(cfg.file).is_absolute() else Path(base_dir) / cfg.file
        m = Mapping.load(p)
    if m.n_atoms != reference.n_atoms:
        raise InputError(f"mapping has {m.n_atoms} atoms, the system {reference.n_atoms}")
    return m
