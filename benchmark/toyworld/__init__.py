"""benchmark/toyworld."""
