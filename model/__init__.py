"""CLIPSeg as a library: model, weights, pre/post-processing, prompts, mask encodings.

Imports torch, open_clip, PIL and numpy only — never the web stack.
"""
