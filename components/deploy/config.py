"""Typed config of the deploy phase (`uses: deploy`) and of `lifecycle serve`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.apps.config import RagConfig


class Autoscaling(BaseModel):
    """Ray Serve autoscaling: replicas follow the ongoing requests per replica."""

    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(2, ge=1, description="Replicas at most under load.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Ongoing requests per replica the autoscaler aims for.")


class DeployConfig(BaseModel):
    """An OpenAI-compatible endpoint on Ray Serve for the approved model (and the run's LoRA adapters)."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="Address Serve's HTTP proxy binds (0.0.0.0 to listen on every interface).")
    port: int = Field(8000, ge=1, le=65535, description="Port of Serve's HTTP proxy; the API is at http://HOST:PORT/v1.")
    app_name: str = Field("lifecycle", pattern=r"^[A-Za-z0-9_-]+$", description="Serve application name (one per endpoint).")
    served_name: str | None = Field(None, description="Model id clients ask for; None: the workflow's name.")
    replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set).")
    autoscaling: Autoscaling | None = Field(None, description="Scale replicas with load instead of a fixed count.")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs each replica reserves.")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs each replica reserves.")
    max_batch_size: int = Field(8, ge=1, description="Requests merged into one generate call (serve.batch); 1 disables batching.")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0, description="Under concurrent load (the last batch held more than one request), how long a batch "
        "waits to fill, in seconds; a request to an idle or single-client server starts at once.")
    max_ongoing_requests: int = Field(16, ge=1, description="Generations a replica works on at once (a request counts its "
                                      "prompts x n); more get 429 + Retry-After, and a request asking for more than "
                                      "this alone a 400.")
    max_queued_requests: int = Field(32, ge=0, description="Requests waiting per deployment before Serve answers 503.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body, in bytes: 413 above, before it "
                                "is read or parsed.")
    max_chars_per_token: int = Field(16, ge=1, description="A prompt (or classifier input) longer in characters than "
                                     "this many times the model's context is refused (400) before it is tokenized.")
    api_key_file: str | None = Field(None, description="A file holding the API key clients must send (Authorization: "
                                     "Bearer KEY), on each node that runs a replica; without it a replica takes "
                                     "LIFECYCLE_API_KEY from its node's environment. None and no such variable: no key.")
    allow_unauthenticated: bool = Field(False, description="Serve without an API key on an address other than "
                                        "loopback (127.0.0.1); refused unless set, so no endpoint is open by accident.")
    max_tokens: int = Field(64, ge=1, description="Default max_tokens of a request that sets none.")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask for (400 above).")
    max_adapters_per_replica: int = Field(4, ge=1, description="LoRA adapters a replica keeps loaded (serve.multiplexed LRU).")
    alias: str = Field("production", description="MLflow alias set on the served model version.")
    wait: bool = Field(True, description="Locally, keep serving after the workflow ends until Ctrl-C (--no-wait overrides).")
    rag: RagConfig | None = Field(None, description="Also serve retrieval-augmented generation over a document "
                                  "collection at rag.route_prefix (/v1/rag), answered by this endpoint's model; "
                                  "{} for the bundled CPython docs; None: no RAG route.")

    @model_validator(mode="after")
    def _check(self):
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError(f"max_tokens ({self.max_tokens}) must not exceed max_tokens_limit ({self.max_tokens_limit})")
        if self.autoscaling and self.autoscaling.min_replicas > self.autoscaling.max_replicas:
            raise ValueError("autoscaling.min_replicas must not exceed autoscaling.max_replicas")
        if self.rag is not None:
            if "model_app" in self.rag.model_fields_set and self.rag.model_app != self.app_name:
                raise ValueError(f"rag.model_app ({self.rag.model_app}) must be app_name ({self.app_name}), or left out")
            if self.rag.app_name == self.app_name:
                raise ValueError(f"rag.app_name must differ from app_name ({self.app_name}): they are two Serve applications")
            # The route calls this endpoint's model deployment.
            self.rag = self.rag.model_copy(update={"model_app": self.app_name})
        return self
