"""hysac: safety-aware vision-language embeddings in hyperbolic space (after HySAC, CVPR 2025).

Distance from the origin of the Lorentz hyperboloid is a safety score; see :mod:`hysac.safety`.
"""

from . import lorentz, safety
from .errors import CheckpointError, HySACError, InputError, ModelMismatchError
from .model import HySAC, load_model

__version__ = "0.1.0"
__all__ = ["HySAC", "load_model", "lorentz", "safety", "HySACError", "InputError", "CheckpointError",
           "ModelMismatchError", "__version__"]
