"""ASE calculator for a :class:`KernelForceField` (ASE uses eV and Å; the model kcal/mol and Å)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError

KCAL_MOL_IN_EV = 0.043364104241800934  # 1 kcal/mol in eV


def KernelCalculator(model, **kwargs):
    """An ``ase.calculators.calculator.Calculator`` giving energy (eV) and forces (eV/Å) from ``model``.

    ``model`` is a :class:`KernelForceField` or the path of a saved model. The atoms object must have the
    model's atomic numbers in the model's order.
    """
    from ase.calculators.calculator import Calculator, all_changes

    from .model import KernelForceField

    ff = KernelForceField.load(model) if not isinstance(model, KernelForceField) else model

    class _KernelCalculator(Calculator):
        implemented_properties = ["energy", "forces", "free_energy"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            z = self.atoms.get_atomic_numbers()
            if len(z) != ff.n_atoms or not np.array_equal(z, ff.z):
                raise InputError(f"atoms {list(z)} do not match the model's atomic numbers {list(ff.z)}")
            E, F = ff.predict(self.atoms.get_positions()[None])
            self.results["energy"] = float(E[0]) * KCAL_MOL_IN_EV
            self.results["free_energy"] = self.results["energy"]
            self.results["forces"] = F[0] * KCAL_MOL_IN_EV

    return _KernelCalculator(**kwargs)
