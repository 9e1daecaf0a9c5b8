"""Static (no-run) mean-field prediction of the NLC and neuron bias (digest §6).

The recursion runs over the ArchGraph in forward order from the model's actual initial
parameters; each node carries M (squared neuron offsets), v (data variance), mean (the common
offset) and N (the linearised variance), so that NLC = sqrt(N / v), neuron bias
NB = sqrt(M / (M + v)) and rms = sqrt(M + v). Zero-padded maps are followed position by
position, and finite width by the samples' scale modes. The derivation, op by op, what is not
predicted and the known limits: docs/predictor.md.

Modules: ``api`` (predict, segment_nlc, activation_nlc and their results), ``recursion`` (the
walk over the nodes and its dispatch) with its rules in ``chains`` (elementwise functions),
``layers`` (parameters and constants) and ``signals`` (sums, pooling, reshapes), sharing
``base``; ``state`` and ``spatial`` (per-position maps) hold the state, ``integrals`` the
Gaussian integrals and their cache.
"""

from archlint.predict.api import NodePrediction, Prediction, activation_nlc, predict, segment_nlc

__all__ = ["NodePrediction", "Prediction", "predict", "segment_nlc", "activation_nlc"]
