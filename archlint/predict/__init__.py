"""The static mean-field NLC predictor (docs/predictor.md), split by concern: ``state`` (the
per-node state and scale modes), ``spatial`` (per-position maps) and ``integrals`` (the
Gaussian integrals and their cache); the recursion and the entry points are still in
``archlint.meanfield``."""
