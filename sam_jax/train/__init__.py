"""Fine-tuning: losses, click simulation, jit train steps, sharding, synthetic data, recipes."""
