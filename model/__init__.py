"""CLIPSeg as a library: model, weights, pre/post-processing, prompts, mask encodings.

Imports torch, open_clip, PIL, numpy (and safetensors / huggingface_hub for weights) —
never the web stack (tests/test_layering.py checks it).
"""
