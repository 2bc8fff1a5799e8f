"""clipseg-client: a light client for the clipseg-serve HTTP API.

``Client`` / ``AsyncClient`` send images (paths, bytes, PIL images, numpy arrays) with
text prompts or support examples and return typed results whose masks are numpy bool
arrays at the image's size; 429/503 answers and connection failures are retried within
a time budget (``RetryPolicy``); failures raise typed ``ClipSegError`` subclasses.
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    BadRequest,
    ClipSegError,
    ConnectionFailed,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
    UnsupportedMedia,
)
from .options import PostOptions
from .results import Mask, Segmentation
from .retry import NO_RETRY, RetryPolicy
from .rle import decode_rle
from .version import __version__

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClipSegError",
    "ConnectionFailed",
    "DeadlineExceeded",
    "InvalidInput",
    "Mask",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PostOptions",
    "RequestTimeout",
    "RetryPolicy",
    "Segmentation",
    "ServerError",
    "Unauthorized",
    "UnsupportedMedia",
    "__version__",
    "decode_rle",
]
