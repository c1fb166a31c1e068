"""Explanations: Grad-CAM and token maps, scored against NIH's bounding boxes."""
