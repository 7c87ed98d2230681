"""gpustack: pull, serve and run models from one process."""

__version__ = "0.1.0"
