"""CPU kernels: tensor ops."""
