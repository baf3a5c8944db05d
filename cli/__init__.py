"""relay's command line."""
