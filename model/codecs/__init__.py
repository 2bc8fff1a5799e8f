"""Mask encodings: COCO RLE, PNG, polygons."""
