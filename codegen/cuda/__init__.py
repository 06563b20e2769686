"""The Numba CUDA back end: kernels per plan step, launch library, host module, trainer."""
