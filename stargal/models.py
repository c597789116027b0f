"""Where the estimators were before issue #19 split this module: every old name, re-exported.

The code lives in

* :mod:`stargal.classifier`: :class:`StarGalaxyNet`, :class:`SkyValidSplit`,
  :class:`LeakyValidationWarning`, the scorers, :func:`make_cnn_net`, :data:`PREDICT_BATCH_SIZE`;
* :mod:`stargal.pipelines`: :class:`SkyPipeline`, :class:`InputUnion`, :class:`Flatten` and the
  ``make_*_pipeline`` factories;
* ``stargal._threads``: :func:`torch_threads`, :data:`ENV_PREDICT_THREADS` (and the thread probe).

This module stays so that ``from stargal.models import ...`` keeps working and so that model files
and pickles written before the split, which name ``stargal.models.StarGalaxyNet``,
``stargal.models.SkyPipeline``, ``stargal.models.SkyValidSplit``, ``stargal.models.Flatten`` or
``stargal.models.InputUnion``, still load: every class is the same object under both paths.
New code imports from the modules above.

Examples
--------
>>> from stargal import classifier, models, pipelines
>>> models.StarGalaxyNet is classifier.StarGalaxyNet, models.SkyPipeline is pipelines.SkyPipeline
(True, True)
"""

from stargal._threads import ENV_PREDICT_THREADS, torch_threads
from stargal.classifier import (PREDICT_BATCH_SIZE, LeakyValidationWarning, SkyValidSplit, StarGalaxyNet,
                                make_cnn_net, valid_balanced_accuracy, valid_roc_auc)
from stargal.pipelines import (Flatten, InputUnion, SkyPipeline, make_cnn_pipeline, make_forest_pipeline,
                               make_hybrid_pipeline, make_majority_pipeline, make_measured_forest_pipeline,
                               make_rule_pipeline)

__all__ = [
    "SkyValidSplit",
    "StarGalaxyNet",
    "SkyPipeline",
    "Flatten",
    "make_cnn_net",
    "make_cnn_pipeline",
    "make_forest_pipeline",
    "make_majority_pipeline",
    "make_rule_pipeline",
    "make_measured_forest_pipeline",
    "make_hybrid_pipeline",
    "InputUnion",
    "valid_balanced_accuracy",
    "valid_roc_auc",
    "LeakyValidationWarning",
    "torch_threads",
    "PREDICT_BATCH_SIZE",
    "ENV_PREDICT_THREADS",
]
