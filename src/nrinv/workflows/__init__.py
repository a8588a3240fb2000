"""Uses of an inverted latent, one module per workflow: editing, interpolation, rare-concept seeds,
and the encoding adjustment they can start from."""
from .common import edit_defaults, slerp
from .editing import EditResult, edit, local_edit_mask, regenerate
from .encoding import adjust_encoding
from .interpolation import InterpolationResult, interpolate
from .seeds import SeedResult, seed_from_images

__all__ = ["EditResult", "edit", "regenerate", "local_edit_mask", "adjust_encoding", "InterpolationResult",
           "interpolate", "SeedResult", "seed_from_images", "edit_defaults", "slerp"]
