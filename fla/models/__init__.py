"""FLA 0.6.0's ``fla.models``: so far the generation cache the layers read and write
(``fla.models.cache_utils``)."""

from fla.models.cache_utils import Cache, FLACache, FLALayer

__all__ = ["Cache", "FLACache", "FLALayer"]
