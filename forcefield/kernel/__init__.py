"""sGDML-class kernel global force field (Matérn-5/2 Hessian kernel on inverse distances), in torch."""
