"""CPU kernels: sequence ops."""
