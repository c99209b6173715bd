"""Foresight: reference PyTorch implementations of ten Google DeepMind systems, with reproductions."""

__version__ = "0.1.0"
