"""Kinetics video pipeline: manifests, downloads, frames, datasets."""
