"""The network: CLIP's towers with CLIPSeg's decoder, text prompts, compiled towers."""
