"""The model registry: versions per model family, checksummed, with an atomic production pointer."""

from pipeline.registry.registry import Registry, RegistryError

__all__ = ["Registry", "RegistryError"]
