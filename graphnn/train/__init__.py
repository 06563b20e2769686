"""The training driver: compile, fit, predict; checkpoints, history, metrics, NaN diagnosis."""
