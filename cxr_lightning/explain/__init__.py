"""Explanations: Grad-CAM and token maps, scored against NIH's bounding boxes.

* :mod:`~cxr_lightning.explain.gradcam`: Grad-CAM maps of a batch (the target layer of each backbone);
* :mod:`~cxr_lightning.explain.localization`: box geometry, pointing game, energy in the box, summary per label;
* :mod:`~cxr_lightning.explain.boxes`: reading NIH's ``BBox_List_2017.csv`` into our label names;
* :mod:`~cxr_lightning.explain.overlay`: a heatmap blended on the image, with boxes, written as PNG;
* :mod:`~cxr_lightning.explain.explain_files`: explaining image files (shared by the command and
  :func:`~cxr_lightning.explain.explain_files.evaluate_localization`), and finding the box file's images;
* :mod:`~cxr_lightning.explain.command`: ``cxr-lightning explain``.
"""
