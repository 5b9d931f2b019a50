"""Quora question pairs: ingest (download / read / demo), clean and split, embed, train, report."""
