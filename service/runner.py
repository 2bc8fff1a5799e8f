"""Runs one batch of jobs on the model thread.

Per batch: one batched text-encoder call per template (through the predictor's LRU
cache), one support-encoder call for every visual prompt, one backbone pass per distinct
image, one decoder pass over every (image, prompt) row, then per-job postprocessing at
each image's own size (still on the device).
"""

from __future__ import annotations

import time

import torch

from model.postprocess import Combine
from model.predictor import Predictor

from .jobs import JobResult, SegmentJob


def _text_lookup(predictor: Predictor, jobs: list[SegmentJob]) -> dict[tuple, torch.Tensor]:
    """(template, phrase) -> embedding [D], with one encoder call per template."""
    by_template: dict = {}
    for job in jobs:
        phrases = by_template.setdefault(job.template, {})
        for phrase in (*job.prompts, *job.negative_prompts):
            phrases[phrase] = None
    lookup = {}
    for template, phrases in by_template.items():
        names = list(phrases)
        if not names:
            continue  # visual-only jobs
        for name, vector in zip(names, predictor.text_embeddings(names, template), strict=True):
            lookup[template, name] = vector
    return lookup


def _visual_lookup(predictor: Predictor, jobs: list[SegmentJob]) -> dict[int, torch.Tensor]:
    """job position -> k-shot mean support embedding [D], one encoder call in all."""
    with_supports = [(i, job.supports) for i, job in enumerate(jobs) if job.supports is not None]
    if not with_supports:
        return {}
    stacked = torch.cat([supports for _, supports in with_supports])
    embedded = predictor.support_embeddings(stacked)
    counts = [int(supports.shape[0]) for _, supports in with_supports]
    return {
        i: chunk.mean(0)
        for (i, _), chunk in zip(with_supports, embedded.split(counts), strict=True)
    }


def _conditionals(job: SegmentJob, text: dict, visual: torch.Tensor | None) -> torch.Tensor:
    """[rows, D]: positive rows (visual/hybrid, or one per prompt), then negatives."""
    rows = []
    if visual is not None:
        if job.prompts and job.text_weight is not None:
            visual = Predictor.hybrid(text[job.template, job.prompts[0]], visual, job.text_weight)
        rows.append(visual)
    else:
        rows += [text[job.template, p] for p in job.prompts]
    rows += [text[job.template, p] for p in job.negative_prompts]
    return torch.stack(rows)


def run_batch(predictor: Predictor, jobs: list[SegmentJob]) -> list[JobResult]:
    """Masks for every job, in order. Raises if any part of the batch fails."""
    start = time.perf_counter()
    text = _text_lookup(predictor, jobs)
    visual = _visual_lookup(predictor, jobs)
    image_ids: dict[str, int] = {}
    images: list[torch.Tensor] = []
    conds: list[torch.Tensor] = []
    index: list[int] = []
    for i, job in enumerate(jobs):
        if job.image_key not in image_ids:
            image_ids[job.image_key] = len(images)
            images.append(job.pixels)
        job_conds = _conditionals(job, text, visual.get(i))
        conds.append(job_conds)
        index += [image_ids[job.image_key]] * job_conds.shape[0]
    logits = predictor.logits(
        torch.stack(images), torch.cat(conds), torch.tensor(index, dtype=torch.long)
    )
    results, offset = [], 0
    for job in jobs:
        job_logits = logits[offset : offset + job.rows]
        offset += job.rows
        results.append(_postprocess(predictor, job, job_logits))
    elapsed = time.perf_counter() - start
    for result in results:
        result.model_seconds = elapsed
    return results


def _postprocess(predictor: Predictor, job: SegmentJob, logits: torch.Tensor) -> JobResult:
    positive, negative = logits[: job.positive_rows], logits[job.positive_rows :]
    masks, probs = predictor.postprocess(
        positive, job.size, threshold=job.threshold, combine=job.combine, negative_logits=negative
    )
    labels = ["visual"] if job.supports is not None else list(job.prompts)
    if job.combine is Combine.UNION:
        probs, labels = probs.max(0, keepdim=True).values, ["union"]
    elif job.combine is Combine.INTERSECTION:
        probs, labels = probs.min(0, keepdim=True).values, ["intersection"]
    scores = probs.flatten(1).max(1).values
    return JobResult(
        masks=masks.cpu().numpy(),
        probabilities=probs.cpu().numpy(),
        scores=scores.cpu().numpy(),
        labels=labels,
        threshold=job.threshold,
    )
