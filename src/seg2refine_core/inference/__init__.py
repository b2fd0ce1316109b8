"""Inference: bundled and trained models loaded once, stage 1 slice by slice, stage 2 as a sliding window."""
