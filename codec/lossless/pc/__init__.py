"""Lossless image codec with probabilistic circuits: HCLT structure, EM, exact conditionals, coding."""
