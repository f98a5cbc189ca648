"""Request bodies of the HTTP service (validated with pydantic) and response shapes (for the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..policy import MODES
from ..safety import Modality

Mode = Literal[MODES]  # type: ignore[valid-type]  # the values of hysac.policy.Mode


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @field_validator("k", "threshold", "tau", mode="before", check_fields=False)
    @classmethod
    def _no_bool(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        return v


class ClassifyRequest(_Body):
    """JSON body of ``POST /classify`` (images go as multipart uploads, with ``texts`` as repeated form fields)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["a cat on a sofa", "a weapon in the park"]}]})

    texts: list[str] = Field(default_factory=list, description="Texts to classify, answered in this order.")
    threshold: Optional[float] = Field(None, ge=0, le=1e6, allow_inf_nan=False,
                                       description="Decision threshold on the score (default: the model's, per "
                                                   "modality).")


class SearchRequest(_Body):
    """JSON body of ``POST /search`` (an image query goes as a multipart upload with these as form fields)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "a dog in the park", "mode": "redirect",
                                                               "k": 10}]})

    text: Optional[str] = Field(None, description="Text query (or upload an image instead).")
    mode: Mode = Field("off", description="Safety mode: off | filter | redirect | redirect+filter | seek-unsafe.")
    k: int = Field(10, description="Number of results (1..max_k).")
    modality: Optional[Modality] = Field(None, description="Search only text or only image items (default: both).")
    rerank: Literal["none", "entail"] = Field("none", description="Entailment-cone re-rank of the top candidates.")


class TraverseRequest(_Body):
    """JSON body of ``POST /traverse`` (an image query goes as a multipart upload with these as form fields)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "a cat covered in blood", "direction": "in",
                                                               "k": 8}]})

    text: Optional[str] = Field(None, description="Text query (or upload an image instead).")
    target: Optional[Modality] = Field(
        None, description="Gallery modality whose safe region the query is pulled toward (and whose items are "
                          "shown): 'image' (class V) or 'text' (class S). Default: image if the index holds "
                          "images, else text.")
    direction: Literal["in", "out"] = Field(
        "in", description="'in': redirect toward the safe region (the redirect modes); 'out': push outward "
                          "(seek-unsafe).")
    tau: Optional[float] = Field(None, ge=0, le=1e6, allow_inf_nan=False,
                                 description="Target distance from the origin (default: the model's redirect / "
                                             "seek-unsafe radius for the target).")
    k: int = Field(8, description="Nearest items shown before and after the move (0..max_k).")


# ------------------------------------------------------------------------------------------------ responses
class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the input.")
    code: str = Field(description="Short machine-readable code, e.g. invalid_input, malformed_json, "
                                  "payload_too_large, unsupported_media_type, not_found.")
    status: int
    details: Optional[list[dict[str, Any]]] = None


class ClassificationOut(BaseModel):
    input: str
    modality: Modality
    score: Optional[float]
    unsafe: Optional[bool]
    threshold: Optional[float]
    categories: dict[str, float]
    top_category: Optional[str] = None
    truncated: Optional[bool] = Field(None, description="A text longer than the model reads: judged on its opening "
                                                        "only (null for images).")
    error: Optional[str] = None


class ClassifyResponse(BaseModel):
    model_id: str
    results: list[ClassificationOut]


class QueryInfo(BaseModel):
    modality: Modality
    text: Optional[str] = None
    image: Optional[str] = Field(None, description="Upload file name of an image query.")
    safety_score: float
    unsafe: bool
    threshold: float
    categories: Optional[dict[str, float]]
    top_category: Optional[dict[str, Any]]
    truncated: Optional[bool] = Field(None, description="A text query longer than the model reads: judged and "
                                                        "searched by its opening only.")


class ResultOut(BaseModel):
    rank: int
    id: int
    key: str
    modality: Modality
    text: Optional[str] = None
    path: Optional[str] = None
    image_url: Optional[str] = Field(None, description="GET it to fetch the indexed image.")
    similarity: float
    distance: float
    safety_score: float
    unsafe: bool
    categories: Optional[dict[str, float]]
    top_category: Optional[dict[str, Any]]
    metadata: dict[str, Any]
    entailed: Optional[bool] = None


class QueryMove(BaseModel):
    radius: Optional[float] = Field(description="Distance from the origin the mode moves the query to (null: no move).")
    moved: bool = Field(description="Whether the query was moved before searching this sub-gallery.")
    status: str = Field(description="What was done, in words, e.g. 'pulled in to radius 0.420'.")
    score_after: float = Field(description="Safety score of the point actually searched.")


class SearchResponse(BaseModel):
    query: QueryInfo
    mode: Mode
    k: int
    modality: Optional[Modality]
    rerank: str
    results: list[ResultOut]
    moves: dict[str, QueryMove] = Field(description="Per sub-gallery searched (text / image): what the mode did "
                                                    "to the query.")
    took_ms: float


class PlotPoint(BaseModel):
    role: Literal["query_before", "query_after", "result"]
    x: float
    y: float
    radius: float = Field(description="Poincaré unit-disk radius tanh(sqrt(c)·d/2).")
    safety_score: float
    unsafe: Optional[bool] = None
    label: str
    id: Optional[int] = None
    modality: Optional[Modality] = None
    image_url: Optional[str] = None
    near_before: bool = False
    near_after: bool = False


class PlotRing(BaseModel):
    label: str
    distance: float
    radius: float


class Plot(BaseModel):
    curvature: float
    points: list[PlotPoint]
    rings: list[PlotRing]


class TraverseResponse(BaseModel):
    query: QueryInfo
    target: Modality
    direction: Literal["in", "out"]
    tau: float
    score_before: float
    score_after: float
    unsafe_before: bool
    unsafe_after: bool
    moved: bool
    status: str = Field(description="What was done, in words (hysac.policy.Moved.describe).")
    results_before: list[ResultOut]
    results_after: list[ResultOut]
    plot: Plot
    took_ms: float


class HealthResponse(BaseModel):
    status: str
    model: dict[str, Any]
    index: Optional[dict[str, Any]]
    modes: list[str]
    limits: dict[str, Any]
    pending: int
    encode_batching: dict[str, int] = {}
