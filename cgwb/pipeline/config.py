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
from typing import Any, Literal

from pydantic import Field, ValidationError

from backmap.recipe import BackmapConfig
from forcefield.kernel.md import ReferenceMDConfig
from cg.fit_mapping import MappingConfig
from cg.forcematching import ForceMatchingConfig
from cg.simulate import SimulationConfig
from forcefield.config import Config, config_error
from forcefield.errors import InputError

FORCE_SOURCES = ("trajectory", "kernel", "xtb", "openmm")
MAP_KINDS = ("learned", "preset", "selections", "file")


class SystemConfig(Config):
    """The molecule: a PDB to simulate with OpenMM, or a user's topology (+ trajectory) read by MDAnalysis."""

    pdb: str | None = None
    topology: str | None = None
    trajectory: str | None = None
    selection: str = "all"
    solvent: Literal["vacuum", "obc2", "gbn2", "tip3p"] = "vacuum"
    temperature: float = Field(300.0, gt=0)
    platform: Literal["auto", "CUDA", "OpenCL", "CPU", "Reference"] = "auto"


class SamplingConfig(Config):
    """AA sampling with OpenMM (frames saved every ``save_every`` steps of ``timestep_fs``).

    method : ``remd`` (temperature replica exchange over ``replicas`` temperatures spaced geometrically from
    the system's up to ``max_temperature``, or the ladder ``temperatures``; frames at the system's temperature),
    ``hot`` (``replicas`` independent runs, each equilibrated first at ``max_temperature`` then cooled) or
    ``md`` (``replicas`` independent plain runs at the system's temperature, default 1). Seed data that has
    crossed barriers lets the kernel force field cover the states its MD will visit. constraints : ``auto`` (HBonds in explicit solvent only), ``none`` or ``hbonds`` (then
    2 fs steps are safe; the saved forces are the force field's, map constrained H into their heavy atom's bead).
    hydrogen_mass : amu, hydrogen mass repartitioning (with ``hbonds``, 4 fs steps; the configurational
    ensemble is unchanged). workers : run the independent replicas of ``md``/``hot`` in that many local
    processes (Dask; one thread each), e.g. 2 on a 2-core machine. coverage_temperature : K of one more short
    plain run (implicit solvent or vacuum; ``coverage_frames`` frames) whose frames only add kernel-FF training
    labels (``reference.hot_frames``): amber14 at 300-600 K almost never visits φ > 0 of alanine dipeptide
    (0 of 2,000 seed frames), GFN2-xTB at 300 K does (3 % of the kernel FF's MD), and 800 K reaches it
    (16 % of frames). None: no such run.
    """

    method: Literal["md", "remd", "hot"] = "remd"
    coverage_temperature: float | None = Field(800.0, gt=0)
    coverage_frames: int = Field(1000, gt=0)
    hydrogen_mass: float | None = Field(None, ge=1.0, le=5.0)
    workers: int = Field(1, ge=1)
    frames: int = Field(2000, gt=0)
    save_every: int = Field(250, gt=0)
    timestep_fs: float = Field(1.0, gt=0)
    replicas: int = Field(4, ge=1)
    max_temperature: float = Field(600.0, gt=0)
    temperatures: list[float] | None = None
    constraints: Literal["auto", "none", "hbonds"] = "auto"


class ReferenceConfig(Config):
    """Where the reference forces come from; for ``kernel``: labels and the kernel force field's σ."""

    forces: Literal["trajectory", "kernel", "xtb", "openmm"] = "kernel"
    dataset: str | None = None
    label_frames: int = Field(200, gt=0)
    test_frames: int = Field(200, gt=0)
    sigma: float | list[float] | None = None
    spot_frames: int = Field(50, gt=0)
    hot_frames: int = Field(40, ge=0, description="extra kernel-FF training labels from the sampling's coverage run")
    max_selfconsistency: float | None = Field(1.5, gt=0)


class ActiveSection(Config):
    """Active learning of the kernel force field on its own MD (:func:`forcefield.kernel.active.active_learn`);
    ``rounds = 0`` turns it off. Its MD uses the reference's sampler (``kernel_md``: temperatures, ladders,
    time step, hydrogen mass), so ``replicas`` must be a multiple of ``kernel_md.temperatures``. A round ends
    learning when random spot checks (``target_ratio``) and the labelled most uncertain frames
    (``uncertain_ratio``; None: no worst-case check) are within those multiples of the held-out force error."""

    rounds: int = Field(4, ge=0)
    replicas: int = Field(18, gt=0)
    md_steps: int = Field(4000, gt=0)
    save_every: int = Field(40, gt=0)
    frames_per_round: int = Field(30, gt=0)
    spot_checks: int = Field(20, gt=0)
    target_ratio: float = Field(1.5, gt=0)
    uncertain_ratio: float | None = Field(2.5, gt=0)


class KernelMDConfig(ReferenceMDConfig):
    """AA Langevin MD with the kernel force field: the reference ensemble
    (:class:`forcefield.kernel.md.ReferenceMDConfig`)."""


class CGSection(ForceMatchingConfig):
    """Force matching (:class:`cg.forcematching.ForceMatchingConfig`) and CG MD settings of the pipeline.

    md_ns : CG simulated time summed over ``replicas`` (ns); None: as long as the AA reference. Replicas run
    as one batch, so many replicas cost little more than a few. save_fs : fs between saved CG frames (None:
    the reference's frame interval). compile : compile the CG forces of the MD step (``torch.compile``; ~15 s
    to compile on CPU; the dipeptide's gated FeatureNet potential, 128 replicas, 12,000 steps: 33 s in all
    against 85 s eager; the eager step where compiling fails or disagrees with it). bead_masses :
    the beads' masses in the dynamics: ``"mapped"`` (the mapped atoms' masses; a Cα bead weighs 12 amu) or
    ``"represented"`` (every atom counted once, :meth:`cg.mapping.Mapping.represented_masses`: a Cα bead
    carries its residue), which allows a ~3x larger time step; the sampled distribution is the same.
    """

    force_map: Literal["auto", "sum", "optimal"] = "auto"  # type: ignore[assignment]
    replicas: int = Field(128, gt=0)
    timestep_fs: float = Field(2.0, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    md_ns: float | None = Field(8.0, gt=0)
    save_fs: float | None = Field(100.0, gt=0)
    compile: bool = True
    bead_masses: Literal["mapped", "represented"] = "mapped"

    def forcematching(self, force_map: str, constraints: str = "none") -> ForceMatchingConfig:
        """The recipe config, with ``auto`` already resolved into ``force_map`` and the reference's
        ``constraints``."""
        d = {k: v for k, v in self.model_dump().items() if k in ForceMatchingConfig.model_fields}
        cons = "hbonds" if "hbonds" in (constraints, d.get("constraints")) else "none"
        return ForceMatchingConfig.build({**d, "force_map": force_map, "constraints": cons})

    def simulation(self, n_steps: int, save_every: int, temperature: float) -> SimulationConfig:
        return SimulationConfig(replicas=self.replicas, n_steps=n_steps, timestep_fs=self.timestep_fs,
                                save_every=save_every, friction_per_ps=self.friction_per_ps,
                                temperature=float(temperature), compile=self.compile)


class BackmapSection(BackmapConfig):
    """Backmapping (:class:`backmap.recipe.BackmapConfig`) and the end-to-end comparison: ``cg_frames`` CG-MD
    frames (evenly spaced over every replica's run) are backmapped for the φ/ψ free-energy surface."""

    cg_frames: int = Field(40000, gt=0)


class PipelineConfig(Config):
    """The whole ``cgwb run`` config: one typed section per stage."""

    name: str = "alanine-dipeptide"
    seed: int = Field(0, ge=0)
    device: str | None = None
    system: SystemConfig = Field(default_factory=SystemConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    active: ActiveSection = Field(default_factory=ActiveSection)
    kernel_md: KernelMDConfig = Field(default_factory=KernelMDConfig)
    mapping: MappingConfig = Field(default_factory=MappingConfig)
    cg: CGSection = Field(default_factory=CGSection)
    backmap: BackmapSection = Field(default_factory=lambda: BackmapSection())


#: the pipeline's own defaults where they differ from the recipes' (the embedded alanine-dipeptide run)
DEFAULTS: dict[str, Any] = {}

QUICK: dict[str, Any] = {
    "sampling": {"frames": 300, "save_every": 50, "coverage_frames": 50},
    "active": {"rounds": 1, "replicas": 2, "md_steps": 100, "save_every": 10, "frames_per_round": 5, "spot_checks": 5},
    "reference": {"label_frames": 30, "test_frames": 20, "sigma": 40.0, "spot_frames": 10, "hot_frames": 5},
    "kernel_md": {"replicas": 4, "temperatures": 2, "max_temperature": 350.0, "frames": 60, "save_every": 10,
                  "timestep_fs": 1.0},
    "mapping": {"epochs": 20},
    "cg": {"epochs": 3, "replicas": 2, "md_ns": None, "save_fs": None, "compile": False},
    "backmap": {"epochs": 2, "samples": 2, "frames": 10, "train_frames": 60},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict) and k != "selections":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass
class RunConfig:
    """A validated run configuration: ``model`` (typed sections) and ``data`` (the same as nested dicts)."""

    model: PipelineConfig
    source: str = "embedded default"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def data(self) -> dict[str, Any]:
        return self.model.model_dump()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def section(self, key: str) -> Any:
        """The typed config of one section (e.g. ``cfg.section("cg")``)."""
        return getattr(self.model, key)

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
    """Read and validate a run configuration (TOML or YAML); ``None`` gives the embedded default.

    Types, ranges, allowed values and files are checked before any work starts; errors name the file, the
    section and the field.
    """
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
    data = _merge(DEFAULTS, QUICK) if quick else copy.deepcopy(DEFAULTS)
    data = _merge(data, user)
    if overrides:
        data = _merge(data, overrides)
    try:
        model = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, src) from None
    cfg = RunConfig(model=model, source=src, base_dir=base)
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
    if ref["dataset"] and not cfg.path(ref["dataset"]).exists():
        raise InputError(f"{src}: reference.dataset = {ref['dataset']!r}: no such file")
    if ref["forces"] == "trajectory" and not s["trajectory"]:
        raise InputError(f"{src}: reference.forces = 'trajectory' needs system.topology and system.trajectory")
    if mp["kind"] == "preset":
        from cg.presets import PRESETS

        if mp["preset"] not in PRESETS:
            raise InputError(f"{src}: unknown preset {mp['preset']!r}; expected one of {sorted(PRESETS)}")
    if mp["kind"] == "selections" and not mp["selections"]:
        raise InputError(f"{src}: mapping.kind = 'selections' needs a mapping.selections table")
    if mp["kind"] == "file" and (not mp["file"] or not cfg.path(mp["file"]).exists()):
        raise InputError(f"{src}: mapping.file = {mp['file']!r}: no such file")
    n_atoms = count_atoms(cfg)
    if mp["kind"] == "learned":
        nb = mp["n_beads"]
        if nb > n_atoms:
            raise InputError(f"{src}: mapping.n_beads = {nb} is larger than the number of atoms ({n_atoms})")


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
