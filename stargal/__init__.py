"""stargal."""
