"""``cgwb export``: trained models in the formats other engines load (OpenMM through openmm-torch)."""
from __future__ import annotations

import argparse

from .common import add_group


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)
    p = g.add_parser("openmm", help="CG potential -> TorchScript module for openmm-torch (nm in, kJ/mol out)",
                     description="Write a trained CG potential as a TorchScript module with openmm-torch's "
                                 "conventions (positions in nm in, energy in kJ/mol out; OpenMM takes forces by "
                                 "autograd) and, with --system, an OpenMM System XML of the beads (masses, no "
                                 "constraints; the TorchForce is added when openmm-torch is installed).")
    p.add_argument("model", help="CG potential (.pt from cgwb cg train)")
    p.add_argument("-o", "--out", default="cg_openmm.pt", help="TorchScript module (default: %(default)s)")
    p.add_argument("--system", default=None, help="also write the beads' OpenMM System as XML")
    p.set_defaults(func=_openmm)


def _openmm(a: argparse.Namespace) -> int:
    from cg.export import export_torchscript, openmm_system
    from cg.potential import CGPotential
    from forcefield.errors import InputError

    pot = CGPotential.load(a.model)
    path = export_torchscript(pot, a.out)
    print(f"wrote {path} ({pot.n_beads} beads; positions nm -> energy kJ/mol)")
    if a.system:
        import openmm

        from forcefield.fileio import atomic_path

        try:
            system, note = openmm_system(pot, path), "with its TorchForce"
        except InputError as e:
            system, note = openmm_system(pot), f"without a TorchForce: {e}"
        with atomic_path(a.system) as tmp:
            tmp.write_text(openmm.XmlSerializer.serialize(system))
        print(f"wrote {a.system} ({note})")
    return 0
