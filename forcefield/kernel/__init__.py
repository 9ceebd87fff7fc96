"""sGDML-class kernel global force field (Matérn-5/2 Hessian kernel on inverse distances), in torch.

>>> from forcefield import KernelForceField, load_dataset
>>> ff = KernelForceField(sigma=50).fit(ds.R[tr], ds.z, F=ds.F[tr], E=ds.E[tr])
>>> E, F = ff.predict(ds.R[te])            # kcal/mol, kcal/mol/Å
"""
from .model import KernelForceField, stratified_split
from .symmetry import detect_permutations

__all__ = ["KernelForceField", "detect_permutations", "stratified_split"]
