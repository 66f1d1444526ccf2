"""Training one run: the corpus and batches, the model, the optimizers, the loop, checkpoints and data-parallel processes (torch)."""
