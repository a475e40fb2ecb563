"""The package version, read statically by setuptools."""

__version__ = "0.1.0"
