"""CPU kernels: controlflow ops."""
