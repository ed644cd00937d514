"""Transfer learning: the lecture's three scenarios and an advisor that lets the data choose."""

from .cache import default_cache_dir, extract
from .linear import LinearClassifier, fit_linear
from .advisor import Advice, advise
from .scenarios import features, finetune, scratch
from .surgery import feature_layers, reinitialised, truncate, with_new_head

__all__ = ["Advice", "advise", "scratch", "features", "finetune", "extract", "default_cache_dir", "fit_linear", "LinearClassifier",
           "feature_layers", "truncate", "with_new_head", "reinitialised"]
