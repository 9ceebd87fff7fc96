"""Configuration of ``cgwb run``: the embedded default (alanine dipeptide) or a user's TOML/YAML file.

Every field is checked before any long work starts; a bad config fails at once with a message that
names the field and what was expected.

Example (TOML)::

    name = "my-peptide"
    [system]
    pdb = "peptide.pdb"            # simulate this PDB with OpenMM ...
    # topology = "top.tpr"         # ... or read a trajectory MDAnalysis understands
    # trajectory = "traj.trr"
    # selection = "protein"
    [reference]
    forces = "kernel"              # trajectory | kernel | xtb | openmm
    # dataset = "md17_aspirin.npz" # sGDML dataset to train the kernel force field on
    [mapping]
    kind = "learned"               # learned | preset | selections | file
    n_beads = 6
    # preset = "backbone"
    # selections = { N = "name N", CA = "name CA" }
    # file = "map.json"
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forcefield.errors import InputError

FORCE_SOURCES = ("trajectory", "kernel", "xtb", "openmm")
MAP_KINDS = ("learned", "preset", "selections", "file")

DEFAULTS: dict[str, Any] = {
    "name": "alanine-dipeptide",
    "seed": 0,
    "device": None,
    "system": {"pdb": None, "topology": None, "trajectory": None, "selection": "all", "solvent": "vacuum",
               "temperature": 300.0},
    "sampling": {"frames": 5000, "save_every": 200, "timestep_fs": 1.0},
    "reference": {"forces": "kernel", "dataset": None, "label_frames": 200, "test_frames": 200, "sigma": None},
    "kernel_md": {"replicas": 16, "frames": 800, "save_every": 50, "timestep_fs": 1.0},
    "mapping": {"kind": "learned", "n_beads": 6, "preset": "backbone", "selections": None, "file": None,
                "epochs": 100},
    "cg": {"epochs": 200, "replicas": 16, "timestep_fs": 2.0, "friction_per_ps": 1.0, "network": "features",
           "patience": 25, "force_map": "sum"},
    "backmap": {"epochs": 30, "samples": 4, "frames": 200, "train_frames": 3000},
}

QUICK: dict[str, Any] = {
    "sampling": {"frames": 300, "save_every": 50},
    "reference": {"label_frames": 30, "test_frames": 20, "sigma": 40},
    "kernel_md": {"replicas": 2, "frames": 60, "save_every": 10},
    "mapping": {"epochs": 20},
    "cg": {"epochs": 3, "replicas": 2},
    "backmap": {"epochs": 2, "samples": 2, "frames": 10, "train_frames": 60},
}


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise InputError(f"config: unknown field {path + k!r}; expected one of {sorted(base)}")
        if isinstance(base[k], dict) and base[k] and isinstance(v, dict) and k != "selections":
            out[k] = _merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = v
    return out


@dataclass
class RunConfig:
    """A validated run configuration (nested dicts as in :data:`DEFAULTS`)."""

    data: dict[str, Any]
    source: str = "embedded default"
    base_dir: Path = field(default_factory=Path.cwd)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def section(self, key: str) -> dict[str, Any]:
        return self.data[key]

    def path(self, value: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else (self.base_dir / p)

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True, default=str)


def load_config(path: str | os.PathLike | None = None, quick: bool = False,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run configuration (TOML or YAML); ``None`` gives the embedded default."""
    user: dict[str, Any] = {}
    src, base = "embedded default", Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such config file")
        src, base = str(p), p.resolve().parent
        text = p.read_text()
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                user = yaml.safe_load(text) or {}
            else:
                import tomllib

                user = tomllib.loads(text)
        except Exception as e:  # noqa: BLE001 - parser errors vary
            raise InputError(f"{p}: cannot parse config ({e})") from e
        if not isinstance(user, dict):
            raise InputError(f"{p}: the config must be a table/mapping at the top level")
    data = _merge(DEFAULTS, {})
    if quick:
        data = _merge(data, QUICK)
    try:
        data = _merge(data, user)
        if overrides:
            data = _merge(data, overrides)
    except InputError as e:
        raise InputError(f"{src}: {e}") from None
    cfg = RunConfig(data=data, source=src, base_dir=base)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Check the config before any work: files exist, names are known, sizes make sense."""
    src = cfg.source
    s, ref, mp = cfg["system"], cfg["reference"], cfg["mapping"]
    if s["pdb"] and s["topology"]:
        raise InputError(f"{src}: give either system.pdb (simulate) or system.topology (+ trajectory), not both")
    for key in ("pdb", "topology", "trajectory"):
        if s[key] and not cfg.path(s[key]).exists():
            raise InputError(f"{src}: system.{key} = {s[key]!r}: no such file")
    if s["trajectory"] and not s["topology"]:
        raise InputError(f"{src}: system.trajectory needs system.topology")
    if ref["forces"] not in FORCE_SOURCES:
        raise InputError(f"{src}: reference.forces = {ref['forces']!r}; expected one of {FORCE_SOURCES}")
    if ref["dataset"] and not cfg.path(ref["dataset"]).exists():
        raise InputError(f"{src}: reference.dataset = {ref['dataset']!r}: no such file")
    if ref["forces"] == "trajectory" and not s["trajectory"]:
        raise InputError(f"{src}: reference.forces = 'trajectory' needs system.topology and system.trajectory")
    if ref["forces"] == "openmm" and s["topology"] and not s["pdb"]:
        pass  # OpenMM forces for a user trajectory need a PDB OpenMM can parametrise: checked at load time
    if mp["kind"] not in MAP_KINDS:
        raise InputError(f"{src}: mapping.kind = {mp['kind']!r}; expected one of {MAP_KINDS}")
    if mp["kind"] == "preset":
        from cg.presets import PRESETS

        if mp["preset"] not in PRESETS:
            raise InputError(f"{src}: unknown preset {mp['preset']!r}; expected one of {sorted(PRESETS)}")
    if mp["kind"] == "selections" and not mp["selections"]:
        raise InputError(f"{src}: mapping.kind = 'selections' needs a mapping.selections table")
    if mp["kind"] == "file" and (not mp["file"] or not cfg.path(mp["file"]).exists()):
        raise InputError(f"{src}: mapping.file = {mp['file']!r}: no such file")
    if cfg["cg"]["network"] not in ("features", "schnet"):
        raise InputError(f"{src}: cg.network = {cfg['cg']['network']!r}; expected 'features' or 'schnet'")
    if cfg["cg"]["force_map"] not in ("auto", "sum", "optimal"):
        raise InputError(f"{src}: cg.force_map = {cfg['cg']['force_map']!r}; expected 'auto', 'sum' or 'optimal'")
    n_atoms = count_atoms(cfg)
    if mp["kind"] == "learned":
        nb = mp["n_beads"]
        if not isinstance(nb, int) or nb < 2:
            raise InputError(f"{src}: mapping.n_beads must be an integer >= 2, got {nb!r}")
        if nb > n_atoms:
            raise InputError(f"{src}: mapping.n_beads = {nb} is larger than the number of atoms ({n_atoms})")
    for sec, keys in (("sampling", ("frames", "save_every")), ("kernel_md", ("replicas", "frames")),
                      ("cg", ("epochs", "replicas")), ("backmap", ("epochs", "samples"))):
        for k in keys:
            v = cfg[sec][k]
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{src}: {sec}.{k} must be a positive integer, got {v!r}")


def count_atoms(cfg: RunConfig) -> int:
    """Atoms in the configured system (after the selection), read cheaply from the topology."""
    s = cfg["system"]
    if s["topology"]:
        from forcefield import open_universe

        u = open_universe(cfg.path(s["topology"]))
        ag = u.select_atoms(s["selection"]) if s["selection"] != "all" else u.atoms
        if ag.n_atoms == 0:
            raise InputError(f"{cfg.source}: system.selection {s['selection']!r} matches no atoms")
        return ag.n_atoms
    pdb = cfg.path(s["pdb"]) if s["pdb"] else None
    if pdb is None:
        from forcefield.data import alanine_dipeptide_pdb

        pdb = alanine_dipeptide_pdb()
    n = sum(1 for line in pdb.read_text().splitlines() if line.startswith(("ATOM", "HETATM")))
    if n == 0:
        raise InputError(f"{pdb}: no ATOM/HETATM records")
    return n
