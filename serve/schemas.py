"""Pydantic models: HTTP requests and responses, the application's args and the model settings.

Numbers are strict and finite: a string, a bool, NaN or ±Infinity where a number belongs is a 422
naming the field. What only the loaded model knows (its feature count and names) is checked by
serve.models and is a 422 too.
"""

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MAX_FEATURES = 1024  # per step: far above any model here; only bounds the work a request can ask for
TASKS = ("route", "encode")
TOKEN_ENV = "TUNESTACK_ADMIN_TOKEN"  # the management endpoints' bearer token (its sha256 reaches the app)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Requests. The instance limits are settings, so the request models are built for them.


@functools.cache
def request_models(max_instances: int, max_steps: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """(RouteRequest, EncodeRequest) accepting at most `max_instances` instances per batch and
    `max_steps` steps per sequence."""
    Vector = Annotated[list[Finite], Field(min_length=1, max_length=MAX_FEATURES)]
    Named = Annotated[dict[str, Finite], Field(min_length=1, max_length=MAX_FEATURES)]
    Sequence = Annotated[list[Vector], Field(min_length=1, max_length=max_steps)]

    class RouteInstance(_Strict):
        """One routing decision: named features, a feature vector, or a sequence of vectors."""

        features: Named | Vector | None = Field(
            None,
            description='{"similarity": 0.9, …} (the model\'s feature names) or [0.9, …] in the '
            "model's feature order",
        )
        sequence: Sequence | None = Field(None, description="[[…], …]: one feature vector per step")

        @model_validator(mode="after")
        def _one_form(self):
            if (self.features is None) == (self.sequence is None):
                raise ValueError('give exactly one of "features" or "sequence"')
            return self

    class RouteRequest(_Strict):
        """One instance (its fields at the top level) or a batch under "instances"."""

        features: Named | Vector | None = None
        sequence: Sequence | None = None
        instances: Annotated[list[RouteInstance], Field(min_length=1, max_length=max_instances)] | None = (
            Field(None, description=f"a batch of 1..{max_instances} instances")
        )

        @model_validator(mode="after")
        def _one_form(self):
            given = [k for k in ("features", "sequence", "instances") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError('give exactly one of "features", "sequence" or "instances"')
            return self

        def as_instances(self) -> tuple[list[dict], bool]:
            """(instances as plain dicts, whether the request was a batch)."""
            if self.instances is not None:
                return [i.model_dump(exclude_none=True) for i in self.instances], True
            return [self.model_dump(exclude_none=True, exclude={"instances"})], False

    class EncodeInstance(_Strict):
        concept: str = Field(min_length=1, max_length=512, description="e.g. us-gaap Revenues")
        unit: str = Field(min_length=1, max_length=128, description="e.g. USD")
        value: Finite

    class EncodeRequest(_Strict):
        concept: str | None = Field(None, min_length=1, max_length=512)
        unit: str | None = Field(None, min_length=1, max_length=128)
        value: Finite | None = None
        instances: Annotated[list[EncodeInstance], Field(min_length=1, max_length=max_instances)] | None = (
            Field(None, description=f"a batch of 1..{max_instances} triplets")
        )

        @model_validator(mode="after")
        def _one_form(self):
            single = [self.concept, self.unit, self.value]
            if self.instances is not None:
                if any(v is not None for v in single):
                    raise ValueError('give either "instances" or one "concept", "unit", "value", not both')
            elif any(v is None for v in single):
                raise ValueError('give "concept", "unit" and "value" (or a batch under "instances")')
            return self

        def as_instances(self) -> tuple[list[dict], bool]:
            if self.instances is not None:
                return [i.model_dump() for i in self.instances], True
            return [{"concept": self.concept, "unit": self.unit, "value": self.value}], False

    return RouteRequest, EncodeRequest


class PromoteRequest(_Strict):
    version: str = Field(pattern=r"^v\d{4,}$", description="a registered version, e.g. v0002")


class JobRequest(_Strict):
    """POST /v1/jobs: a tuning run of one tune file (see serve.jobs)."""

    config: str = Field(
        min_length=1,
        max_length=256,
        description="tune_configs/FILE.yaml (a file directly in the app's tune_configs folder)",
    )
    promote: bool = Field(
        False,
        description="put the best model straight into production (default: register "
        "it only; promote it with POST /v1/models/{family}/promote)",
    )
    overrides: list[str] = Field(
        default_factory=list,
        max_length=32,
        description='KEY=VALUE overrides, as `tunestack tune --set` (e.g. "train.epochs=4")',
    )


# ---------------------------------------------------------------------------------------------
# Responses (documented in the OpenAPI schema)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: the reason in `detail` (a validation error: the list of problems)."""

    detail: str | list[dict] = Field(description="why the request was refused")
    reason: str | None = Field(None, description="validation errors in one line")


class RouteResult(BaseModel):
    route: Literal["lightweight", "powerful"]
    probability: float | None = Field(description="P(the lightweight model suffices); null on fallback")
    uncertainty: float | None = Field(
        description="MC-dropout spread in [0, 1] when the model was trained with dropout; null otherwise "
        "(and on fallback). GET /v1/models/{family} says which"
    )
    threshold: float | None = Field(
        None, description="the probability threshold that decided (lightweight iff probability >= it)"
    )
    threshold_source: Literal["calibrated", "deployment", "default"] | None = Field(
        None,
        description="calibrated: the model version's own (training calibrated it for "
        "route.max_lightweight_error); deployment: the app's confidence_threshold; default: an "
        "uncalibrated version's 0.85",
    )
    decided_by: Literal["threshold", "uncertainty"] | None = Field(
        None,
        description="threshold: the probability against the threshold decided; uncertainty: the "
        "probability cleared it, but the uncertainty exceeded the deployment's max_uncertainty",
    )
    model_version: str | None
    latency_us: int = Field(description="microseconds from request receipt to answer")
    fallback: bool = Field(
        False,
        description="true: the router failed or its circuit is open; the safe route was chosen without it",
    )
    reason: str | None = Field(None, description="why the fallback was used")


class RouteBatchResult(BaseModel):
    predictions: list[RouteResult]


class Baseline(BaseModel):
    scope: Literal["pair", "global"]
    count: int
    mean: float
    std: float


class EncodeResult(BaseModel):
    concept: str
    unit: str
    latent: list[float]
    reconstruction_error: float
    anomaly_score: float = Field(description="(error − mean) / std of the pair's training errors")
    baseline: Baseline
    pair_known: bool = Field(
        description="false: the model never saw this (concept, unit); it was embedded from its text "
        "with the model's embedder and its value scaled with `fallback`"
    )
    fallback: str | None = Field(
        None, description='the scaler used for an unseen pair: "unit:USD" (its unit\'s) or "global"'
    )
    model_version: str
    latency_us: int


class EncodeBatchResult(BaseModel):
    predictions: list[EncodeResult]


# ---------------------------------------------------------------------------------------------
# Settings


class BreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1, description="consecutive router failures/timeouts that open it")
    reset_timeout_s: float = Field(5.0, gt=0, description="open this long before one probe is let through")
    call_timeout_s: float = Field(5.0, gt=0, description="a router call slower than this is a failure")


class ModelSettings(_Strict):
    """A model deployment's user_config (live-updatable with `serve deploy`, no restart). These
    fields are also keys of AppArgs (serve/config.yaml `args`), which passes them to every model."""

    confidence_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="routing threshold for every router version; null (default): each version's own, "
        "calibrated in training for route.max_lightweight_error",
    )
    max_uncertainty: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a second condition for routers with an MC-dropout uncertainty (trained with "
        "dropout): lightweight only when the uncertainty is at most this; null: off",
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="requests per dynamic batch (@serve.batch)")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, le=10, description="a lone request waits this long for company (0: never)"
    )
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="how often the production pointer is read")


class AppArgs(ModelSettings):
    """`args` of serve.app:build_app (the `args:` block of serve/config.yaml): ModelSettings' keys
    (passed to every model deployment) plus the application's own."""

    registry_root: str | None = Field(None, description="a path or URI; default: $TUNESTACK_STORAGE/registry")
    store_uri: str | None = Field(
        None, description="triplet store for encode; default: the one the autoencoder was trained on"
    )
    families: dict[str, Literal["route", "encode"]] = Field(
        default_factory=lambda: {"router": "route", "autoencoder": "encode"},
        description="family -> the endpoint it serves (one family per endpoint)",
    )
    model_deployments: list[str] = Field(
        default_factory=list,
        description="families served by their own ModelServer deployment (model-FAMILY; a GPU family, "
        "a heavy model) instead of inside the ingress replica (the default: one hop)",
    )
    max_instances: int = Field(256, ge=1, le=100_000, description="instances per request")
    max_sequence_length: int = Field(512, ge=1, le=100_000)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger bodies get 413 unread")
    reload_wait_s: float = Field(10.0, ge=0, description="promote/rollback wait this long for replicas")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    admin_token_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the bearer token for /v1/models*; default: from $TUNESTACK_ADMIN_TOKEN",
    )
    jobs_configs_dir: str | None = Field(
        None,
        description="POST /v1/jobs: the tune_configs folder its "
        '"tune_configs/FILE.yaml" names (default: the repo\'s)',
    )
    jobs_home: str | None = Field(
        None,
        description="TUNESTACK_HOME of the tuning jobs (default: the folder "
        "holding registry_root, so jobs register where this app looks)",
    )
    jobs_dashboard_address: str | None = Field(
        None, description="Jobs API address (default: this cluster's dashboard, found through the GCS)"
    )
    model_num_cpus: float = Field(0.25, gt=0, description="CPUs per model replica (config.yaml may override)")
    gateway_num_cpus: float = Field(0.25, gt=0)

    @model_validator(mode="after")
    def _one_family_per_task(self):
        for task in TASKS:
            fams = [f for f, t in self.families.items() if t == task]
            if len(fams) > 1:
                raise ValueError(f"families: {fams} all serve {task!r}; one family per endpoint")
        unknown = sorted(set(self.model_deployments) - set(self.families))
        if unknown:
            raise ValueError(f"model_deployments: {unknown} are not in families {sorted(self.families)}")
        return self

    def model_settings(self) -> dict:
        """The model deployments' user_config: this app's values of ModelSettings' keys."""
        return self.model_dump(include=set(ModelSettings.model_fields))
