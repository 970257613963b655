"""XYZ plots of merges: axes and cells (axes), rendering with the Mixer (render), the labelled image (figure)."""
