"""Standalone modules: the training step plus a small API, for users to run without graphnn."""
