"""The Numba CPU back end: step emitters, module assembly, the compiled trainer."""
