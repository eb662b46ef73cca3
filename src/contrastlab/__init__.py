"""contrastlab."""
