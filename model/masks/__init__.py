"""Masks out: post-processing settings, rendering on the device, refinement, runs."""
