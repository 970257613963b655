"""merge_core."""
