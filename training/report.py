"""Plain-text report of a ``SegmentationMetrics.compute()`` result (``clipseg-eval``)."""

from __future__ import annotations

from typing import Any

from clipseg_serve.training.metrics import REPORTED_THRESHOLDS

_METRICS = (("fg_iou", "fg IoU"), ("binary_iou", "binary IoU"), ("miou", "mIoU"))


def _fmt(value: float | None) -> str:
    """A metric with 4 decimals, or "n/a" when undefined (None)."""
    return "n/a" if value is None else f"{value:.4f}"


def format_table(result: dict[str, Any], per_prompt_limit: int = 20) -> str:
    """One row per threshold (the best fg IoU's marked ``*``), the summary (best and fixed
    thresholds, AP), then the per-prompt rows of the ``per_prompt_limit`` most frequent
    prompts."""
    miou = result["miou"] or [None] * len(result["thresholds"])
    header = ("threshold", "fg IoU", "bg IoU", "bin IoU", "mIoU", "precision", "recall")
    lines = [" ".join(f"{h:>9}" for h in header)]
    rows = zip(
        result["thresholds"], result["fg_iou"], result["bg_iou"], result["binary_iou"], miou,
        result["precision"], result["recall"], strict=True,
    )  # fmt: skip
    for t, *values in rows:
        mark = "*" if t == result["best_threshold"] else " "
        lines.append(f"{mark}{t:>8.2f} " + " ".join(f"{_fmt(v):>9}" for v in values))
    lines.append(
        f"samples {result['samples']}  AP {_fmt(result['ap'])}  "
        f"(trapezoid {_fmt(result['ap_trapezoid'])})"
    )
    lines += [_summary_line(result, key, label) for key, label in _METRICS]
    if result["classes"] is None:
        lines.append("mIoU n/a: the samples carry no class labels")
    lines += _prompt_lines(result, per_prompt_limit)
    return "\n".join(lines)


def _summary_line(result: dict[str, Any], key: str, label: str) -> str:
    """One metric's line: "fg IoU best 0.6123 @ 0.42 | 0.1: ... 0.5: ..."."""
    threshold_key = "best_threshold" if key == "fg_iou" else f"best_{key}_threshold"
    best, at = result[f"best_{key}"], result[threshold_key]
    where = "" if at is None else f" @ {at:.2f}"
    fixed = "  ".join(
        f"{t:g}: {_fmt(result[f'{key}_{t:g}'])}"
        for t in REPORTED_THRESHOLDS
        if f"{key}_{t:g}" in result
    )
    return f"{label:>10} best {_fmt(best)}{where} | {fixed}"


def _prompt_lines(result: dict[str, Any], limit: int) -> list[str]:
    """Per-prompt rows (most samples first), or nothing without a breakdown."""
    prompts = result.get("per_prompt") or {}
    if not prompts or limit <= 0:
        return []
    ranked = sorted(prompts.items(), key=lambda kv: (-kv[1]["samples"], kv[0]))
    at = f"fg IoU@{result['best_threshold']:.2f}"
    lines = [
        f"per prompt ({min(limit, len(ranked))} of {len(ranked)}, most samples first):",
        f"{'samples':>8} {'best fg IoU':>11} {at:>11} {'AP':>8}  prompt",
    ]
    for prompt, row in ranked[:limit]:
        lines.append(
            f"{row['samples']:>8} {row['best_fg_iou']:>11.4f} {row['fg_iou']:>11.4f} "
            f"{_fmt(row['ap']):>8}  {prompt}"
        )
    return lines
