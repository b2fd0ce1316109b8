"""napari plugin for Seg2Refine: thin widgets, a reader, a writer and sample data over ``seg2refine_core``."""

from seg2refine_core import __version__  # one version for the distribution (pyproject reads it from there)

__all__ = ["__version__"]
