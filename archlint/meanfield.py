"""The former name of ``archlint.predict``, the static mean-field NLC predictor; its successor.

Kept so that ``archlint.meanfield.predict(graph)`` and ``from archlint.meanfield import ...``
go on working: the public names are those of ``archlint.predict``. New code imports
``archlint.predict`` (the derivation: docs/predictor.md).
"""

from archlint.predict import NodePrediction, Prediction, activation_nlc, predict, segment_nlc

__all__ = ["NodePrediction", "Prediction", "predict", "segment_nlc", "activation_nlc"]
