"""Strict state-dict loading with errors that name the offending keys."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clipseg_serve.model.errors import WeightsError

_MAX_LISTED = 8


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error.

    Raises:
        WeightsError naming ``what`` (the checkpoint) and the keys at fault.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise WeightsError(f"{what} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)
