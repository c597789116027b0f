"""The torch modules' former home, kept as an alias of :mod:`stargal.cnn` (issue #19).

Model files written before the rename name ``stargal.nets.StarGalaxyCNN``; they load through it.
"""

from stargal.cnn import HybridCNN, StarGalaxyCNN

__all__ = ["StarGalaxyCNN", "HybridCNN"]
