"""MASS: masked sequence-to-sequence pre-training for language generation."""

__version__ = "0.1.0"
