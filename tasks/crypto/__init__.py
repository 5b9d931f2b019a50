"""Crypto next-move pipeline: ingestion, features, leak-free splits, models, evaluation."""
