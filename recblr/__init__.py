"""RecBLR: behavior-dependent linear recurrent units for sequential recommendation."""

__version__ = "0.1.0"
