"""Local building blocks for experiments, demos, benchmarks and tests: tiny models, synthetic tasks, the bandit."""
