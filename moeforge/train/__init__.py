"""Fine-tuning: the selected experts as their own parameters, one explicit loop, checkpoints."""
