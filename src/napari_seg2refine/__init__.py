"""napari plugin for Seg2Refine: thin widgets, a reader, a writer and sample data over ``seg2refine_core``."""

__version__ = "0.1.0"
