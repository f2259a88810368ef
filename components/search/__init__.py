"""Search layer: the head's search space, the grouped trainer, the oracle and the KerasTuner search with MLflow."""
