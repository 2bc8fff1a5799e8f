"""Per-sample sampling shared by every dataset: negatives, prompt templates, supports.

CLIPSeg's training recipe (PhraseCut+) turns an annotated (image, phrase, mask) record
into a training sample by, independently:

* with ``negative_prob``: swapping the phrase for one that is *not* on this image and
  zeroing the target, so the model learns to answer "nothing here";
* with ``support_prob``: attaching a visual prompt, another record of the same phrase
  (on a different image when one exists) with its mask, so the trainer can mix text and
  visual conditioning with w ~ U(0, 0.5);
* with ``template_prob``: wrapping the phrase in a random training template
  ("a photo of a {}.", ...), as the released weights were trained.

``AnnotatedDataset`` implements that once for the file-backed datasets (manifest, COCO,
PhraseCut); the synthetic dataset reuses the small helpers directly.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from PIL import Image

from clipseg_serve.model.network.text import TRAINING_TEMPLATES
from clipseg_serve.training.data import Sample, SampleDataset, Support
from clipseg_serve.training.datasets.augment import Augmentation

__all__ = [
    "AnnotatedDataset",
    "PhraseIndex",
    "apply_template",
    "check_probability",
    "resolve_augment",
    "split_seed",
]

#: Rejection-sampling attempts before falling back to listing every candidate: nearly
#: always enough, and the fallback keeps the answer exact when candidates are rare.
_TRIES = 16


def check_probability(name: str, value: float) -> float:
    """``value`` as a float in [0, 1], or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def resolve_augment(augment: bool | None, split: str) -> bool:
    """Augmentation is on by default for the training split only."""
    return split == "train" if augment is None else bool(augment)


def split_seed(seed: int, split: str) -> int:
    """A seed that depends on both ``seed`` and ``split`` (stable across processes).

    Used where the split itself has no data of its own (synthetic images), so "train"
    and "val" never show the same pictures. crc32, unlike ``hash``, is not salted.
    """
    state = np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8"))])
    return int(state.generate_state(1, np.uint64)[0])


def apply_template(phrase: str, rng: np.random.Generator, template_prob: float) -> str:
    """``phrase`` in a random training template with probability ``template_prob``."""
    if rng.random() >= template_prob:
        return phrase
    return TRAINING_TEMPLATES[int(rng.integers(len(TRAINING_TEMPLATES)))].format(phrase)


class PhraseIndex:
    """Which item shows which phrase on which image: what negatives and supports need.

    ``vocabulary`` is the pool negatives are drawn from (default: the items' phrases). It
    is sorted so draws never depend on set/dict iteration order.
    """

    def __init__(
        self,
        phrases: Sequence[str],
        image_keys: Sequence[Hashable],
        vocabulary: Iterable[str] | None = None,
    ) -> None:
        if len(phrases) != len(image_keys):
            raise ValueError("phrases and image_keys must have the same length")
        self.phrases = list(phrases)
        self.image_keys = list(image_keys)
        by_phrase: dict[str, list[int]] = defaultdict(list)
        on_image: dict[Hashable, set[str]] = defaultdict(set)
        for i, (phrase, key) in enumerate(zip(self.phrases, self.image_keys, strict=True)):
            by_phrase[phrase].append(i)
            on_image[key].add(phrase)
        self.by_phrase = dict(by_phrase)
        self.on_image = {key: frozenset(found) for key, found in on_image.items()}
        self.vocabulary = sorted(set(self.phrases if vocabulary is None else vocabulary))

    def __len__(self) -> int:
        return len(self.phrases)

    def negative_phrase(self, rng: np.random.Generator, index: int) -> str | None:
        """A vocabulary phrase absent from item ``index``'s image; None if there is none."""
        present = self.on_image[self.image_keys[index]]
        vocab = self.vocabulary
        for _ in range(_TRIES):
            candidate = vocab[int(rng.integers(len(vocab)))]
            if candidate not in present:
                return candidate
        rest = [p for p in vocab if p not in present]
        return rest[int(rng.integers(len(rest)))] if rest else None

    def support_item(self, rng: np.random.Generator, phrase: str, index: int) -> int | None:
        """Another item showing ``phrase``: on a different image than item ``index`` when
        one exists, else another item of the same image; None if ``index`` is the only one.
        """
        items = self.by_phrase.get(phrase, [])
        own = self.image_keys[index]
        for _ in range(min(_TRIES, len(items))):
            j = items[int(rng.integers(len(items)))]
            if self.image_keys[j] != own:
                return j
        others = [j for j in items if self.image_keys[j] != own]
        others = others or [j for j in items if j != index]
        return others[int(rng.integers(len(others)))] if others else None


class AnnotatedDataset(SampleDataset):
    """Base of the file-backed datasets: records -> samples with the sampling above.

    Subclasses call ``_set_items`` once their records are parsed and implement
    ``_load(index) -> (image, mask, source)``; everything random happens here.
    """

    def __init__(
        self,
        *,
        split: str,
        seed: int,
        negative_prob: float,
        template_prob: float,
        support_prob: float,
        augment: bool | None,
    ) -> None:
        super().__init__(seed)
        self.split = split
        self.negative_prob = check_probability("negative_prob", negative_prob)
        self.template_prob = check_probability("template_prob", template_prob)
        self.support_prob = check_probability("support_prob", support_prob)
        self.augment = resolve_augment(augment, split)
        self._augmentation = Augmentation() if self.augment else None
        self._index = PhraseIndex([], [])
        self._labels: Sequence[Hashable | None] | None = None

    def _set_items(
        self,
        phrases: Sequence[str],
        image_keys: Sequence[Hashable],
        vocabulary: Iterable[str] | None = None,
        labels: Sequence[Hashable | None] | None = None,
    ) -> None:
        """Index the parsed records. ``labels``: each item's class for the evaluation's
        mIoU (None entries: no class); None: the class is the (raw) phrase asked for,
        also for negatives (COCO categories)."""
        if labels is not None and len(labels) != len(phrases):
            raise ValueError("labels and phrases must have the same length")
        self._index = PhraseIndex(phrases, image_keys, vocabulary)
        self._labels = labels

    def __len__(self) -> int:
        return len(self._index)

    @property
    def phrases(self) -> list[str]:
        """The raw phrase of every item, in index order."""
        return self._index.phrases

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        """Item ``index`` as (RGB image, bool mask at its size, source description)."""
        raise NotImplementedError

    def get(self, index: int, rng: np.random.Generator) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask, source = self._load(index)
        phrase, negative = self.phrases[index], False
        if rng.random() < self.negative_prob:
            other = self._index.negative_phrase(rng, index)
            if other is not None:
                phrase, negative = other, True
                mask = np.zeros_like(mask, dtype=bool)
        # The support shows the phrase actually asked for (also for negatives), as in the
        # reference PhraseCut+ loader: the visual prompt then means what the text means.
        support = self._support(rng, phrase, index) if rng.random() < self.support_prob else None
        text = apply_template(phrase, rng, self.template_prob)
        if self._augmentation is not None:
            image, mask = self._augmentation(image, mask, phrase, rng)
        label = phrase if self._labels is None else self._labels[index]
        return Sample(
            image, mask, text, support=support, is_negative=negative, source=source, label=label
        )

    def _support(self, rng: np.random.Generator, phrase: str, index: int) -> Support | None:
        j = self._index.support_item(rng, phrase, index)
        if j is None:
            return None
        image, mask, _ = self._load(j)
        if self._augmentation is not None:
            image, mask = self._augmentation(image, mask, phrase, rng)
        # A visual prompt needs an object to show (the prompt engineering rejects empty masks).
        return Support(image, mask) if mask.any() else None
