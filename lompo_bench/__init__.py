"""lompo-bench: offline reinforcement learning from images (LOMPO and baselines)."""

__version__ = "0.1.0"
