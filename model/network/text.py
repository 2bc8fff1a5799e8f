"""Text prompts: templates, tokenisation and the text side of conditioning.

Inference in the reference code uses the raw phrase; training used random templates.
We offer the raw phrase (default), one fixed template, or an ensemble (mean of the
embeddings over all training templates).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence

import open_clip
import torch

from clipseg_serve.model.errors import InvalidPromptError

PHOTO_TEMPLATE = "a photo of a {}."

#: The templates CLIPSeg was trained with (the official ``shuffle+`` prompt list).
TRAINING_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photograph of a {}.",
    "an image of a {}.",
    "{}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a photo of one {}.",
    "a bad photo of a {}.",
    "a photo of the {}.",
)


class Template(str, enum.Enum):
    """How a user's phrase becomes the text(s) fed to CLIP."""

    NONE = "none"
    PHOTO = "photo"
    ENSEMBLE = "ensemble"


def texts_per_phrase(template: Template) -> int:
    """How many texts the encoder runs for one phrase under ``template``."""
    return len(TRAINING_TEMPLATES) if template is Template.ENSEMBLE else 1


def parse_template(value: str | Template) -> Template:
    try:
        return Template(value)
    except ValueError:
        known = ", ".join(t.value for t in Template)
        raise InvalidPromptError(f"unknown template {value!r}; use one of: {known}") from None


def clean_prompt(prompt: str) -> str:
    """Strip and validate one phrase; empty or whitespace-only phrases are an error."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"a prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.split())
    if not text:
        raise InvalidPromptError("a prompt must contain at least one non-space character")
    return text


def template_texts(prompt: str, template: Template | str = Template.NONE) -> list[str]:
    """The CLIP inputs for one phrase: 1 text, or one per template for the ensemble."""
    phrase = clean_prompt(prompt)
    mode = parse_template(template)
    if mode is Template.NONE:
        return [phrase]
    if mode is Template.PHOTO:
        return [PHOTO_TEMPLATE.format(phrase)]
    return [t.format(phrase) for t in TRAINING_TEMPLATES]


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> open_clip.tokenizer.SimpleTokenizer:
    """CLIP's BPE tokenizer (its vocabulary ships with open_clip: no download)."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """Token ids [N, L] int64, padded only to the longest text (L <= context_length).

    Texts longer than the context are truncated by the tokenizer, which keeps the
    end-of-text token last so pooling still sees it.
    """
    if not texts:
        raise InvalidPromptError("at least one text is needed")
    tokens = get_tokenizer(context_length)(list(texts))
    length = int((tokens != 0).sum(dim=1).max())
    return tokens[:, :length].contiguous()


def embed_phrases(
    embed_text: Callable[[torch.Tensor], torch.Tensor],
    phrases: Sequence[str],
    template: Template | str,
    context_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Conditioning vectors for user phrases: [N] -> float32 [N, D], by ``embed_text``
    (int64 tokens [M, L] on ``device`` -> [M, D]; the PyTorch or the ONNX text encoder).

    Each phrase goes through ``template`` (raw / photo / ensemble); an ensemble's vector is
    the mean of its template embeddings. All texts go through one encoder call.
    """
    groups = [template_texts(phrase, template) for phrase in phrases]
    tokens = tokenize([t for g in groups for t in g], context_length)
    embedded = embed_text(tokens.to(device)).float()
    return torch.stack([chunk.mean(0) for chunk in embedded.split([len(g) for g in groups])])
