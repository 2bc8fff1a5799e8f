"""Labelling whole datasets: ``clipseg-label`` runs prompts over folders, globs and
manifests of images and writes COCO instance segmentation (and YOLO segmentation files),
resumably, in shards.

Depends on ``clipseg_serve.model`` only (never the web stack): the same predictor, batch
plans and mask encodings as the service.
"""
