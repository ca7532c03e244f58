"""Ember: run OCI images as fast, isolated QEMU microVMs."""

__version__ = "0.1.0"
