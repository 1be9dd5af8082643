"""Training: the recipe `train()`, the step it shares with `bench` and `plan`, the loss, evaluation,
checkpoints, samples, what the process runs on (`Runtime`) and XLA's counters."""
