"""Manifests, importers, datasets and offline corpus recipes."""
