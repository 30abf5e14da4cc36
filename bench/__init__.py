"""bench: benchmarking harness for diffusion models."""
__version__ = "0.1.0"
