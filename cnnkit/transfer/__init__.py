"""Transfer learning: the lecture's three scenarios and an advisor that lets the data choose, on a
``Sequential`` or any graph ``Model`` (cut, new head and frozen ancestors at a named node)."""

from .cache import default_cache_dir, extract
from .linear import LinearClassifier, fit_linear
from .advisor import Advice, advise
from .nodes import feature_layers
from .scenarios import features, finetune, scratch
from .surgery import reinitialised, truncate, with_new_head

__all__ = ["Advice", "advise", "scratch", "features", "finetune", "extract", "default_cache_dir", "fit_linear", "LinearClassifier",
           "feature_layers", "truncate", "with_new_head", "reinitialised"]
