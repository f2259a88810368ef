"""Fine-tuning the top of the backbone with the champion head, from features cached at the frozen boundary."""
