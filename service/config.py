"""Service settings, read from ``CLIPSEG_*`` environment variables (or a .env file)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Default HTTP port; docker-compose.yml and the Dockerfile expose the same.
DEFAULT_PORT = 8000

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Every knob of the service. Each field is ``CLIPSEG_<NAME>`` in the environment.

    List fields (api_keys, cors_origins, compile_batch_sizes) take a JSON list or a
    comma-separated string.
    """

    model_config = SettingsConfigDict(env_prefix="CLIPSEG_", env_file=".env", extra="ignore")

    # Weights and device
    weights: str = Field("CIDAS/clipseg-rd64-refined", description="weights source")
    variant: str | None = Field(None, description="expected variant (error if it differs)")
    backbone: str = Field("openai", description="backbone for official decoder files")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="torch, or onnx (ONNX Runtime: the weights may be a clipseg-export "
        "folder; other weights are exported at start)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto",
        description="auto: bf16 (fp16 on old GPUs) on CUDA, bf16 on CPUs with native bf16 "
        "(AVX-512 BF16 / AMX), else fp32; onnx: int8 if the export passed its check on this "
        "CPU's integer-kernel class (checked at start when it was not), else fp32",
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where query JPEGs are decoded: gpu (batched nvJPEG), cpu, auto (gpu on CUDA)",
    )
    compile_batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="torch.compile the vision tower for these batch sizes during warm-up; "
        "empty = eager",
    )
    pipeline: Literal["auto", "on", "off"] = Field(
        "auto",
        description="launch the next batch while the previous one's masks come back; "
        "auto: on with CUDA",
    )
    warmup: bool = Field(
        True, description="warm-up calibration batches before /readyz is 200 (cost model prior)"
    )

    # Batching
    max_batch_images: int = Field(32, ge=1, description="images per batch")
    max_batch_prompts: int = Field(256, ge=1, description="decoder rows per batch")
    max_wait_ms: float = Field(5.0, ge=0, description="wait for more jobs after the first")
    queue_size: int = Field(256, ge=1, description="queued requests before 429")
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline per request (504); X-Request-Timeout may ask for less"
    )
    max_queue_wait_s: float = Field(
        20.0,
        gt=0,
        description="the most estimated queueing a burst may build (deadlines permitting); "
        "past it the overload is sustained and the queue is held to about half a request",
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM, keep serving this long with /readyz 503 before draining",
    )
    stuck_batch_s: float = Field(
        120.0, gt=0, description="a batch running longer makes /healthz and /readyz 503"
    )
    text_cache_size: int = Field(4096, ge=0, description="cached text embeddings")

    # Input limits
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="whole request body")
    max_image_pixels: int = Field(50_000_000, ge=1, description="per decoded image")
    max_prompts: int = Field(16, ge=1, description="prompts (+ negatives) per request")
    max_prompt_chars: int = Field(1000, ge=1, description="characters per prompt")
    max_supports: int = Field(8, ge=1, description="support images per visual request")
    max_output_pixels: int = Field(
        1_000_000_000, ge=1, description="per request: image pixels x prompt rows"
    )
    max_soft_pixels: int = Field(
        100_000_000, ge=1, description="per request with soft=true: image pixels x masks"
    )
    max_support_pixels: int = Field(
        100_000_000, ge=1, description="per request: pixels of all support images"
    )
    max_refine_pixels: int = Field(
        25_000_000, ge=1, description="per request with refine: image pixels (the guide)"
    )
    max_polygon_vertices: int = Field(
        250_000,
        ge=1,
        description="per response with format=polygon: vertices of all masks' polygons "
        "(413 beyond; about 17 bytes of JSON each)",
    )
    max_instances: int = Field(
        100, ge=1, le=255, description="instances kept per mask with instances=true (best first)"
    )
    memory_budget_mb: int = Field(
        2048, ge=1, description="host memory all requests in flight may reserve (429 beyond)"
    )
    exit_on_fatal: bool = Field(
        True, description="exit (status 3) when the weights fail to load or the worker dies"
    )

    # HTTP
    host: str = Field("0.0.0.0", description="bind address")
    port: int = Field(DEFAULT_PORT, description="HTTP port")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed browser origins; empty = no CORS"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Bearer keys; empty = open"
    )
    docs: bool = Field(
        True, description="serve /docs, /redoc and /openapi.json (open even with API keys)"
    )
    demo: bool = Field(
        True, description="serve the demo page at / (open; its API calls need a key if set)"
    )

    # Logs
    log_level: LogLevel = Field("info", description="critical | error | warning | info | debug")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line (time, level, logger, ...)"
    )

    @model_validator(mode="after")
    def _precision_fits_the_backend(self) -> Settings:
        onnx = ("auto", "float32", "int8")
        if self.backend == "onnx" and self.dtype not in onnx:
            raise ValueError(f"backend onnx runs dtype auto, float32 or int8, not {self.dtype}")
        if self.backend == "torch" and self.dtype == "int8":
            raise ValueError("dtype int8 needs backend onnx (CLIPSEG_BACKEND=onnx)")
        if self.backend == "onnx" and self.compile_batch_sizes:
            raise ValueError("compile_batch_sizes is for backend torch")
        return self

    @field_validator("compile_batch_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"batch sizes must be >= 1, got {value}")
        return value

    @field_validator("cors_origins", "api_keys", "compile_batch_sizes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # The parts stay text; pydantic then validates each against the list's item type.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("pipeline", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        # true/false (and 1/0, yes/no) are as good as on/off.
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        return (
            words.get(value.strip().lower(), value.strip().lower())
            if isinstance(value, str)
            else value
        )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        # CLIPSEG_LOG_LEVEL=INFO is as good as info.
        return value.strip().lower() if isinstance(value, str) else value

    # The door
    header_timeout_s: float = Field(10.0, gt=0, description="request head must arrive within (408)")
    # 60 s: a 20 MB upload at about 3 Mbit/s.
    body_timeout_s: float = Field(60.0, gt=0, description="whole body must arrive within (408)")
    max_connections: int = Field(1024, ge=1, description="connections or requests in flight (503)")
