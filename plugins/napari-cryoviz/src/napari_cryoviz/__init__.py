"""napari plugin for cryoviz: a thin layer over :mod:`cryoviz.api`."""

__version__ = "0.1.0"
