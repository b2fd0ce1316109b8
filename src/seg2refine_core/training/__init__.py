"""Training: the trainers of stage 1, stage 2 and the 3D baseline, their losses, run folders and demo weights."""
