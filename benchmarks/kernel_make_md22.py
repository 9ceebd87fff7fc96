"""Build MD22-class kernel benchmark sets with this repository's tools (GFN2-xTB labels, 500 K).

Molecules (3D geometry from SMILES: RDKit ETKDG + MMFF94, a benchmark-only dependency):

* ``ac-ala3-nhme`` (42 atoms), ``dha`` (docosahexaenoic acid, 56 atoms), both as in MD22, and
  ``ac-ala13-nhme`` (142 atoms, a stand-in for MD22's 148-atom buckyball catcher, which RDKit cannot embed
  reliably).

Sampling with a cheaper method (allowed by the task; ~10x cheaper than xTB MD here): Langevin MD on the MMFF94
surface (RDKit's implementation driven by ``forcefield.langevin.simulate``) at 500 K, 0.5 fs steps, 1 ps of
equilibration, then a frame every 20 steps (10 fs); every sampled frame is then labelled with GFN2-xTB
(``forcefield.reference.xtb_energy_forces``), the labels fanned out over Dask workers (``--workers``).
``--sampler xtb`` runs GFN2-xTB MD instead (``forcefield.reference.xtb_md``, a frame every 10 steps).

CPU on the shared 2-core machine is scarce, so the default sets are small: 1,200 / 600 / 800 frames (MD22 has
85k / 69k / 6k; 800 leave 680 training candidates before the last 15 % test block, enough for 600 points).
Measured here on one core of a loaded machine: Ac-Ala3-NHMe 174 s (11 s of MMFF sampling), DHA 383 s; the
142-atom set (800 frames) took 349 s on two Dask workers of a quiet machine (0.87 s per frame per worker). Sets are cached in ``bench_out/`` and made once; asking for more frames than a cached MMFF-sampled set holds
continues the MMFF94 trajectory from its last frame (fresh velocities, new seed) and labels only the new frames.

    python benchmarks/kernel_make_md22.py [--molecule ac-ala3-nhme] [--frames N] [--workers 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

MOLECULES = {  # name: (SMILES, sampler, default frames)
    "ac-ala3-nhme": ("CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC", "mmff", 1200),
    "dha": ("CC/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\CCC(=O)O", "mmff", 600),
    "ac-ala13-nhme": ("CC(=O)" + "N[C@@H](C)C(=O)" * 13 + "NC", "mmff", 800),
}


def default_path(name: str) -> Path:
    return Path("bench_out") / f"{name}_xtb_500K.npz"


def embed(smiles: str, seed: int = 7):
    """RDKit molecule with hydrogens and one MMFF-relaxed conformer; (mol, R0 (N, 3) Å, z (N,))."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ps = AllChem.ETKDGv3()
    ps.randomSeed = seed
    if AllChem.EmbedMolecule(mol, ps) != 0:
        raise RuntimeError(f"RDKit could not embed {smiles}")
    AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    R0 = mol.GetConformer().GetPositions()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return mol, R0, z


def mmff_md(mol, R0: np.ndarray, n_frames: int, save_every: int = 20, dt_fs: float = 0.5,
            temperature: float = 500.0, seed: int = 1, progress: bool = True, warm: int = 2000) -> np.ndarray:
    """Geometries (n_frames, N, 3) Å from Langevin MD on RDKit's MMFF94 surface (kcal/mol, Å).

    ``warm`` steps of equilibration at the target temperature are run first and not saved."""
    import torch
    from rdkit.Chem import AllChem

    from forcefield.elements import masses
    from forcefield.langevin import simulate

    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])

    def force_fn(x: torch.Tensor):
        pos = x[0].numpy().ravel().tolist()
        e = ff.CalcEnergy(pos)
        g = np.asarray(ff.CalcGrad(pos)).reshape(-1, 3)
        return torch.tensor([e], dtype=x.dtype), torch.from_numpy(-g)[None].to(x.dtype)

    traj = simulate(force_fn, torch.as_tensor(R0), torch.as_tensor(masses(z)), n_steps=warm + n_frames * save_every,
                    save_every=save_every, dt_fs=dt_fs, temperature=temperature, friction_per_ps=1.0, seed=seed,
                    progress=progress, desc="MMFF94 MD")
    n = int(traj.n_valid[0])
    skip = warm // save_every
    if n < skip + n_frames:
        raise RuntimeError(f"MMFF MD became unstable after {n} frames: {traj.stopped}")
    return traj.R[skip:skip + n_frames, 0]


def _label_chunk(R: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from forcefield.reference import xtb_energy_forces

    return xtb_energy_forces(R, z, progress=False)


def label(R: np.ndarray, z: np.ndarray, workers: int = 1, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """GFN2-xTB energies (M,) kcal/mol and forces (M, N, 3) kcal/mol/Å, chunks fanned out over Dask."""
    if workers <= 1:
        from forcefield.reference import xtb_energy_forces

        return xtb_energy_forces(R, z, progress=progress)
    from dask.distributed import Client, LocalCluster

    chunks = np.array_split(np.arange(len(R)), 4 * workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as client:
        futs = [client.submit(_label_chunk, R[c], z, pure=False) for c in chunks if len(c)]
        res = client.gather(futs)
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


def make_md22(name: str, out: Path | None = None, n_frames: int | None = None, workers: int = 1,
              progress: bool = True, sampler: str | None = None, save_every: int = 20):
    """Load the cached set ``name`` (see ``MOLECULES``), or make it; returns a :class:`forcefield.Dataset`.

    ``save_every``: MMFF94 steps (0.5 fs) between frames (20: 10 fs; MD22's training points are ~14 frames of
    its trajectories apart, so sets for thousands of training points want sparser frames)."""
    from forcefield import Dataset, load_dataset
    from forcefield.reference import xtb_md

    smiles, default_sampler, default_n = MOLECULES[name]
    sampler = sampler or default_sampler
    n_frames = n_frames or default_n
    out = Path(out) if out else default_path(name)
    cached = None
    if out.exists():
        cached = load_dataset(out)
        if len(cached) >= n_frames:
            return cached[:n_frames]
    mol, R0, z = embed(smiles)
    t0 = time.perf_counter()
    if cached is not None and sampler == "mmff":
        # extend: the trajectory goes on from the cached last frame (already at 500 K; fresh Maxwell-Boltzmann
        # velocities, a new noise seed), so the set stays one contiguous run; only the new frames are labelled
        n0 = len(cached)
        R = mmff_md(mol, cached.R[-1], n_frames - n0, progress=progress, seed=1 + n0, warm=0, save_every=save_every)
        R = np.concatenate([cached.R, R])
        t1 = time.perf_counter()
        E, F = label(R[n0:], z, workers, progress)
        print(f"{name}: MMFF94 sampling {t1 - t0:.0f} s, GFN2-xTB labels of {n_frames - n0} new frames "
              f"{time.perf_counter() - t1:.0f} s")
        ds = Dataset(R=R, z=z, E=np.concatenate([cached.E, E]), F=np.concatenate([cached.F, F]), name=name,
                     theory=cached.theory)
    elif sampler == "xtb":
        ds = xtb_md(R0, z, n_frames=n_frames, save_every=10, dt_fs=0.5, temperature=500.0, seed=1, name=name,
                    progress=progress)
        ds.extra.pop("times_fs", None)
    else:
        R = mmff_md(mol, R0, n_frames, progress=progress, save_every=save_every)
        t1 = time.perf_counter()
        E, F = label(R, z, workers, progress)
        print(f"{name}: MMFF94 sampling {t1 - t0:.0f} s, GFN2-xTB labels {time.perf_counter() - t1:.0f} s")
        ds = Dataset(R=R, z=z, E=E, F=F, name=name,
                     theory=f"GFN2-xTB labels on MMFF94 Langevin MD frames (500 K, every {save_every / 2:g} fs)")
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save(out)
    print(f"made {out}: {len(ds)} frames x {len(z)} atoms in {time.perf_counter() - t0:.0f} s")
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecule", choices=sorted(MOLECULES), default="ac-ala3-nhme")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=1, help="Dask workers for the xTB labels (MMFF-sampled sets)")
    ap.add_argument("--sampler", choices=["mmff", "xtb"], default=None, help="sampling method (default: mmff)")
    ap.add_argument("--save-every", type=int, default=20, help="MMFF94 steps of 0.5 fs between frames")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    ds = make_md22(a.molecule, a.out, a.frames, a.workers, progress=not a.quiet, sampler=a.sampler,
                   save_every=a.save_every)
    print(ds.summary())


if __name__ == "__main__":
    main()
