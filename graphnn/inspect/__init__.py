"""Explanations: why each gradient is what it is, chains of deltas, the stability audit,
reports, Graphviz drawings, finite-difference checks."""
