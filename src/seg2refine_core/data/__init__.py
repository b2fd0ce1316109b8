"""Data: dataset discovery and splits, preprocessing (X'), the training caches, sampling, patches and the phantom."""
