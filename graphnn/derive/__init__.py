"""Differentiation: reverse-mode autodiff over the IR, SymPy local derivatives screened for
float32 stability (and kept on disk), gradients assembled as matrix formulas."""
