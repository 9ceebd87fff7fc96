"""``cgwb``: the workbench's application layer: the ``cgwb`` command line and the ``cgwb run`` pipeline.

A thin layer over the science packages (``forcefield`` ← ``cg`` ← ``backmap``): it parses, calls one
recipe per step, and prints or reports. No package imports ``cgwb``.
"""
from __future__ import annotations

__version__ = "0.1.0"
