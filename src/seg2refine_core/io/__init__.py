"""File I/O: CT volumes and masks (NIfTI, NRRD), checkpoints (safetensors + JSON) and atomic writes."""
