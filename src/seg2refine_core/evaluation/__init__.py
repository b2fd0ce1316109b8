"""Evaluation: metrics (Dice, HD95, clDice, Betti-0), scoring files against ground truth, figures, baselines."""
