"""Request and response shapes of the embedding, zero-shot and ranking tasks, for `schemas`
(which registers them beside the other four: the same catalog and pipeline bodies, the same
`parse_request` / `format_response`). Imports no torch and no numpy."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
Pooling = Literal["mean", "cls", "max", "mean_sqrt_len"]
MAX_LABELS = 100  # candidate labels per request: each one is a forward pass per text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FeatureExtractionParameters(_Strict):
    pooling: Literal["none", "mean", "cls", "max", "mean_sqrt_len"] = Field(
        "none", description="none: one vector per token (special tokens included); else one vector per text.")
    normalize: bool = Field(False, description="Unit-length (L2) vectors.")
    truncation: bool = Field(False, description="Cut texts over the model's limit instead of refusing them.")


class SentenceEmbeddingParameters(_Strict):
    pooling: Pooling = Field(None, description="Default: the model folder's sentence-transformers pooling.")
    normalize: bool = Field(None, description="Unit-length (L2) vectors. Default: the model folder's (Normalize module).")
    truncation: bool = Field(True, description="Cut texts past the model's max_seq_length, as sentence-transformers "
                                               "does; false refuses them.")


class ZeroShotParameters(_Strict):
    candidate_labels: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_LABELS)] = Field(
        ..., description="The labels to choose from: a list, or one comma-separated string.")
    hypothesis_template: Text = Field("This example is {}.", description="The hypothesis; {} is the label.")
    multi_label: bool = Field(False, description="Score each label on its own (entailment vs contradiction).")
    truncation: bool = Field(True, description="Cut the text (never the hypothesis) to the model's limit.")


class TextRankingParameters(_Strict):
    top_k: int | None = Field(None, ge=1, le=10_000, description="Texts returned, best first; null for all.")
    return_text: bool = Field(False, description="Include each text in the answer.")
    activation: Literal["sigmoid", "none"] | None = Field(
        None, description="none: raw logits. Default: the checkpoint's (sigmoid for a one-logit head).")
    label: Text | None = Field(None, description="A head with several labels: score this label's probability.")
    truncation: bool = Field(True, description="Cut the longer text of a pair to the model's limit.")


class RankQuery(_Strict):
    """A query and the texts to rank against it."""

    query: Text
    texts: Annotated[list[Text], Field(min_length=1)]


class ZeroShotResult(BaseModel):
    sequence: str
    labels: list[str]
    scores: list[float]


class RankedText(BaseModel):
    index: int
    score: float
    text: str | None = None


_Vector = list[float]
TASKS: dict[str, dict[str, Any]] = {
    "feature-extraction": {
        "parameters": FeatureExtractionParameters, "item": Text, "prefix": "FeatureExtraction",
        "response": Union[list[list[list[float]]], list[list[list[list[float]]]], list[_Vector], _Vector],
        "doc": 'Catalog: `{"input_data": ["I love it"]}` -> one `[[token vectors]]` per input (the transformers '
               'pipeline\'s shape), or one vector per input with `"parameters": {"pooling": "mean"}`.',
        "examples": {"catalog": {"input_data": ["Paris is the capital of France."]},
                     "pipeline": {"inputs": "Paris is the capital of France.", "parameters": {"pooling": "mean"}}},
    },
    "sentence-embedding": {
        "parameters": SentenceEmbeddingParameters, "item": Text, "prefix": "SentenceEmbedding",
        "response": Union[list[_Vector], _Vector],
        "doc": 'Catalog: `{"input_data": ["I love it", "I hate it"]}` -> one vector per input. Also `POST /embed` '
               '(Text Embeddings Inference) and `POST /v1/embeddings` (OpenAI).',
        "examples": {"catalog": {"input_data": ["Paris is the capital of France.", "Where is the Eiffel Tower?"]},
                     "pipeline": {"inputs": "Paris is the capital of France."}},
    },
    "zero-shot-classification": {
        "parameters": ZeroShotParameters, "item": Text, "prefix": "ZeroShot",
        "response": Union[list[ZeroShotResult], ZeroShotResult],
        "doc": 'Catalog: `{"input_data": ["I am going to Paris"], "parameters": {"candidate_labels": ["travel", '
               '"cooking"]}}` -> one `{sequence, labels, scores}` per input, labels sorted by score.',
        "examples": {"catalog": {"input_data": ["I am going to Paris next week."],
                                 "parameters": {"candidate_labels": ["travel", "cooking", "politics"]}},
                     "pipeline": {"inputs": "I am going to Paris next week.",
                                  "parameters": {"candidate_labels": ["travel", "cooking"], "multi_label": True}}},
    },
    "text-ranking": {
        "parameters": TextRankingParameters, "item": RankQuery, "prefix": "TextRanking",
        "response": Union[list[list[RankedText]], list[RankedText]],
        "doc": 'Catalog: `{"input_data": [{"query": "Where is Paris?", "texts": ["Paris is in France.", "Hi"]}]}` '
               '-> one `[{index, score, text?}]` per query, best first. Also `POST /rerank` (Text Embeddings '
               'Inference).',
        "examples": {"catalog": {"input_data": [{"query": "Where is Paris?",
                                                 "texts": ["Paris is the capital of France.", "I like bread."]}]},
                     "pipeline": {"inputs": {"query": "Where is Paris?", "texts": ["Paris is in France.", "Hi"]},
                                  "parameters": {"top_k": 1, "return_text": True}}},
    },
}
MODELS = ("RankQuery", *(spec["parameters"].__name__ for spec in TASKS.values()))


def jsonable_result(task: str, result: Any) -> Any:
    """One `task.run` result as JSON values: a feature-extraction (T, dim) array is wrapped in a
    list, the transformers pipeline's batch of one; vectors become lists of floats."""
    if hasattr(result, "tolist"):
        return [result.tolist()] if task == "feature-extraction" and result.ndim == 2 else result.tolist()
    return result
