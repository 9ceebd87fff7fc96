"""The end-to-end pipeline behind ``cgwb run``."""
