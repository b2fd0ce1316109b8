"""Inference, from a checkpoint to masks on disk.

``roles`` (what a model is for; the bundled demo weights) → ``models`` (load a checkpoint, prepare a network for a
device) → ``stage1`` (slices → S) and ``stage2`` (sliding window → Y, and the 3D baseline → B) → ``pipeline`` (both
on one array) → ``predictor`` (volumes and cohorts of files, the model-space seam, torchrun sharding; ``inputs``
finds the files and names the outputs).
"""
