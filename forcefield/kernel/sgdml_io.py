"""Import sGDML 1.0.x model files (``type='m'`` .npz) as :class:`KernelForceField` objects.

sGDML stores training descriptors ``R_desc`` (D, M), the descriptor-space coefficients
``R_d_desc_alpha`` (M, D) (Jacobian times force coefficients), ``sig``, ``std``, ``c`` and ``perms``.
Its energy is ``std * Σ base (σ + r) (u · R_d_desc_alpha) + c`` with the same Matérn-5/2 terms, so an
imported model uses ``w = -R_d_desc_alpha`` and predicts the same numbers (up to round-off).
Models trained with energy constraints (``use_E_cstr``) also hold ``alphas_E`` (M,): sgdml adds
``std * Σ_p alphas_E k(u)`` to the energy, so they become our energy coefficients ``α = -alphas_E``.
Periodic models (``lattice``) are refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..elements import check_z
from ..errors import InputError, where


def read_npz_arrays(path) -> tuple[dict[str, np.ndarray], list[str]]:
    """All plain arrays of an ``.npz`` file, and the names of object (pickled) arrays that were skipped.

    sGDML model files hold a few pickled entries (e.g. ``None`` values); they are never unpickled here.
    """
    import zipfile
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        if not fh.read(4).startswith(b"PK"):
            raise InputError(f"{path}: not a readable .npz file (expected a zip archive of .npy arrays)")
    out, skipped = {}, []
    try:
        with np.load(path, allow_pickle=False) as f:
            for k in f.files:
                try:
                    out[k] = f[k]
                except ValueError:
                    skipped.append(k)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from e
    return out, skipped


def from_sgdml(st: dict[str, np.ndarray], device: str | torch.device = "cpu", source: str | None = None):
    """A :class:`KernelForceField` from the arrays of an sGDML model file."""
    from .model import KernelForceField

    need = ("z", "R_desc", "R_d_desc_alpha", "sig", "perms", "c")
    missing = [k for k in need if k not in st]
    if missing:
        raise InputError(f"{where(source)}not an sGDML model: missing {', '.join(missing)}")
    if "lattice" in st:
        raise InputError(f"{where(source)}periodic sGDML models (with 'lattice') are not supported")
    z = check_z(np.asarray(st["z"]), source)
    n = len(z)
    D = n * (n - 1) // 2
    d = np.asarray(st["R_desc"], dtype=np.float64)
    a = np.asarray(st["R_d_desc_alpha"], dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != D or a.shape != (d.shape[1], D):
        raise InputError(f"{where(source)}R_desc {d.shape} / R_d_desc_alpha {a.shape} do not fit {n} atoms "
                         f"(expected ({D}, M) and (M, {D}))")
    alpha = None
    if "alphas_E" in st:
        alpha = np.asarray(st["alphas_E"], dtype=np.float64).reshape(-1)
        if len(alpha) != d.shape[1]:
            raise InputError(f"{where(source)}alphas_E has {len(alpha)} entries for {d.shape[1]} training points")
        if not np.isfinite(alpha).all():
            raise InputError(f"{where(source)}alphas_E contains NaN or infinite values")
    ff = KernelForceField(sigma=float(st["sig"]), lam=float(st.get("lam", 1e-10)), device=device,
                          energy_constraints=alpha is not None)
    ff.z = z
    ff.sigma_ = float(st["sig"])
    ff.std = float(st["std"]) if "std" in st else 1.0
    ff.c = float(st["c"])
    ff.perms = np.asarray(st["perms"]).astype(int)
    ff.R_train = None
    ff.info["imported_from"] = "sgdml"
    ff._set_model(torch.as_tensor(d.T.copy()), torch.as_tensor(-a),
                  None if alpha is None else torch.as_tensor(-alpha))
    return ff
