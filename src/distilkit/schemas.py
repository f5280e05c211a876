"""Request and response shapes shared by the HTTP server, the CLI and the batch job.

One pydantic model per request shape (the model-catalog JSON of the seed cards and the plain
Hugging Face pipeline JSON), and two pure functions around a task: `parse_request` turns any
accepted body into `task.run(inputs, **params)` arguments plus a shape tag, and
`format_response` turns `task.run`'s results back into the shape the caller used.
Nothing here imports torch or a model.

Shapes (the `shape` tag):
- ``"catalog"``: ``{"inputs": {"input_string": [...]}, "parameters": {...}}``,
  ``{"input_data": {"input_string": [...]}}``, ``{"input_data": {"question": ..., "context": ...}}``,
  ``{"input_data": [...]}``. The response is a list with one entry per input; for
  question answering an entry is the answer string (a list of strings when top_k > 1).
- ``"catalog-full"``: the same requests with ``"parameters": {"return_full": true}``
  (question answering): entries are the full ``{score, start, end, answer}`` objects.
- ``"pipeline"`` / ``"pipeline-single"``: ``{"inputs": X, "parameters": {...}}`` (Hugging Face
  inference-API style) or, for question answering, ``{"question": ..., "context": ...}``. The
  response is what the transformers pipeline returns for ``pipeline(X, **parameters)``,
  including its unwrapping of single inputs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from . import schemas_embed
from .errors import InputError

TASK_NAMES = ("fill-mask", "question-answering", "text-classification", "token-classification",
              *schemas_embed.TASKS)
_ALIASES = {"ner": "token-classification", "sentiment-analysis": "text-classification", "qa": "question-answering",
            "text-embedding": "sentence-embedding"}

SHAPES = ("catalog", "catalog-full", "pipeline", "pipeline-single")
# Options that shape the response and never reach the task.
RESPONSE_OPTIONS = ("return_full",)
_INT_LIMIT = 2**31  # any integer parameter beyond this is refused before it reaches numpy

# ---------------------------------------------------------------------------------------- pieces
# `\S`: at least one non-blank character (JSON-schema patterns search, they are not anchored).
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
# One rule for lists everywhere: a list of inputs is never empty (an empty one is a 422, not `[]`).
Texts = Annotated[list[Text], Field(min_length=1)]


class _Strict(BaseModel):
    """No extra keys, no coercion: a typo or a "2" for 2 is an error that names the field."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPair(_Strict):
    """A text-classification input with an optional second segment."""

    text: Text
    text_pair: Text | None = None


class QAExample(_Strict):
    question: Text
    context: Text


class InputStrings(_Strict):
    """The model catalog's list of texts."""

    input_string: list[Text] = Field(min_length=1)


class QAInputData(_Strict):
    """The model catalog's question answering input: one question or a list, one context or a
    list. Lists of equal length pair up; a single string is paired with every item of a list."""

    question: Text | Texts
    context: Text | Texts


# ---------------------------------------------------------------------------------------- parameters
class FillMaskParameters(_Strict):
    top_k: int = Field(5, ge=1, le=1000, description="Tokens returned per mask.")
    targets: Text | Annotated[list[Text], Field(min_length=1, max_length=1000)] | None = Field(
        None, description="Only score these tokens (words are cut to their first token).")
    truncation: bool = Field(False, description="Cut texts over the model's limit instead of refusing them.")


class QuestionAnsweringParameters(_Strict):
    top_k: int = Field(1, ge=1, le=100, description="Answers per question.")
    doc_stride: int | None = Field(None, ge=0, le=100_000, description="Overlap between context windows, in tokens.")
    max_answer_len: int = Field(15, ge=1, le=10_000, description="Longest answer, in tokens.")
    max_seq_len: int | None = Field(None, ge=8, le=100_000, description="Window length, in tokens.")
    max_question_len: int = Field(64, ge=1, le=100_000, description="Questions are cut to this many tokens.")
    handle_impossible_answer: bool = Field(False, description="Let the empty answer compete.")
    align_to_words: bool = Field(True, description="Widen answers to whole words.")
    return_full: bool = Field(
        False, description="Catalog shapes only: answer with {score, start, end, answer} objects instead of strings.")


class TextClassificationParameters(_Strict):
    top_k: int | None = Field(
        1, ge=1, le=1000,
        description="Labels per input; null for all. Given, each input gets a list sorted by score.")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="Default: from the model's problem type.")
    truncation: bool = Field(False, description="Cut texts over the model's limit instead of refusing them.")


class TokenClassificationParameters(_Strict):
    # Other options of the task pass through (and are checked by the task itself).
    model_config = ConfigDict(extra="allow", strict=True)
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = Field(
        "none", description="How tokens are grouped into entities.")
    ignore_labels: list[str] = Field(["O"], description="Labels left out of the results.")
    stride: int | None = Field(None, ge=0, le=100_000, description="Overlap between windows of long texts.")


PARAMETERS: dict[str, type[BaseModel]] = {
    "fill-mask": FillMaskParameters,
    "question-answering": QuestionAnsweringParameters,
    "text-classification": TextClassificationParameters,
    "token-classification": TokenClassificationParameters,
    **{task: spec["parameters"] for task, spec in schemas_embed.TASKS.items()},
}

# One pipeline input per task.
_ITEM: dict[str, Any] = {
    "fill-mask": Text,
    "question-answering": QAExample,
    "text-classification": Union[Text, TextPair],
    "token-classification": Text,
    **{task: spec["item"] for task, spec in schemas_embed.TASKS.items()},
}
_PREFIX = {
    "fill-mask": "FillMask",
    "question-answering": "QuestionAnswering",
    "text-classification": "TextClassification",
    "token-classification": "TokenClassification",
    **{task: spec["prefix"] for task, spec in schemas_embed.TASKS.items()},
}


# ---------------------------------------------------------------------------------------- request models
def _build_models(task: str) -> dict[str, type[BaseModel]]:
    """The request models of one task, keyed by the way they are told apart in `parse_request`."""
    P, item, prefix = PARAMETERS[task], _ITEM[task], _PREFIX[task]
    params = (P | None, Field(None))
    items = Annotated[list[item], Field(min_length=1)]
    models: dict[str, type[BaseModel]] = {}
    if task == "question-answering":
        models["catalog_data"] = create_model(
            f"{prefix}CatalogRequest", __base__=_Strict,
            __doc__='Model catalog: {"input_data": {"question": ..., "context": ...}}. The answer is a list of '
                    'strings, or of {score, start, end, answer} objects with "parameters": {"return_full": true}.',
            input_data=(QAInputData | items, ...), parameters=params)
        models["pipeline_pair"] = create_model(
            f"{prefix}PipelineRequest", __base__=_Strict,
            __doc__="Hugging Face pipeline JSON: question= and context= (strings or lists).",
            question=(Text | Texts, ...), context=(Text | Texts, ...), parameters=params)
    else:
        models["catalog_inputs"] = create_model(
            f"{prefix}CatalogInputsRequest", __base__=_Strict,
            __doc__='Model catalog: {"inputs": {"input_string": [...]}, "parameters": {...}}.',
            inputs=(InputStrings, ...), parameters=params)
        models["catalog_data"] = create_model(
            f"{prefix}CatalogRequest", __base__=_Strict,
            __doc__='Model catalog: {"input_data": {"input_string": [...]}} or {"input_data": [...]}.',
            input_data=(InputStrings | items, ...), parameters=params)
    models["pipeline_inputs"] = create_model(
        f"{prefix}InputsRequest", __base__=_Strict,
        __doc__='Hugging Face inference-API JSON: {"inputs": one input or a list, "parameters": {...}}.',
        inputs=(item | items, ...), parameters=params)
    return models


REQUEST_MODELS: dict[str, dict[str, type[BaseModel]]] = {t: _build_models(t) for t in TASK_NAMES}


def request_schema(task: str, pipeline_only: bool = False) -> Any:
    """The type (a union of the models) whose JSON schema documents a task's request body."""
    models = REQUEST_MODELS[task_name(task)]
    keys = [k for k in models if k.startswith("pipeline")] if pipeline_only else list(models)
    return Union[tuple(models[k] for k in keys)]  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- response models
class FillMaskToken(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str


class Answer(BaseModel):
    score: float
    start: int
    end: int
    answer: str


class Label(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    score: float
    word: str
    start: int | None = None
    end: int | None = None
    entity: str | None = None
    entity_group: str | None = None
    index: int | None = None


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, a stable type, and the offending field when there is one."""

    error: str
    error_type: str
    field: str | None = None


_FM = Union[list[FillMaskToken], list[list[FillMaskToken]]]  # one mask, several masks
RESPONSE_TYPES: dict[str, Any] = {
    "fill-mask": Union[list[_FM], _FM],
    "question-answering": Union[list[str], list[list[str]], Answer, list[Answer], list[list[Answer]]],
    "text-classification": Union[list[Label], list[list[Label]], Label],
    "token-classification": Union[list[list[Entity]], list[Entity]],
    **{task: spec["response"] for task, spec in schemas_embed.TASKS.items()},
}


# ---------------------------------------------------------------------------------------- functions
def task_name(task: str) -> str:
    name = _ALIASES.get(task, task)
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")
    return name


def parse_request(task: str, body: Any, *, pipeline_only: bool = False) -> tuple[list, dict, str]:
    """Any accepted request body -> (inputs, params, shape) for `task.run(inputs, **params)`.

    `inputs` has one item per example (a string; a {"question", "context"} dict; a
    {"text", "text_pair"} dict), `params` only the task's options the caller set (response
    options such as return_full are folded into `shape`), `shape` one of SHAPES for
    `format_response`. With `pipeline_only`, only the Hugging Face pipeline JSON is accepted.
    Raises InputError naming the offending field ("inputs.input_string.1", "parameters.top_k").
    """
    task = task_name(task)
    models = REQUEST_MODELS[task]
    if not isinstance(body, dict):
        raise InputError(f"the request body must be a JSON object, got {_json_type(body)}", "body")

    if "input_data" in body and not pipeline_only:
        key = "catalog_data"
    elif "inputs" in body:
        inner = body["inputs"]
        key = "catalog_inputs" if isinstance(inner, dict) and "input_string" in inner and not pipeline_only else "pipeline_inputs"
        if key not in models:  # question answering has no {"inputs": {"input_string"}} form
            key = "pipeline_inputs"
    elif task == "question-answering" and ("question" in body or "context" in body):
        key = "pipeline_pair"
    else:
        expected = ", ".join(sorted({f'"{f}"' for m in models.values() for f in m.model_fields if f != "parameters"}
                                    - ({'"input_data"'} if pipeline_only else set())))
        raise InputError(f"the request body needs one of {expected}", "body")

    request = _validate(models[key], body)
    p = request.parameters
    params = p.model_dump(exclude_unset=True) if p is not None else {}
    _check_ints(params)
    return_full = bool(params.pop("return_full", False))
    if task == "text-classification" and "top_k" in params:
        params["legacy"] = False  # top_k given: a list per input, sorted, as the pipeline does

    if key == "pipeline_pair":
        inputs, single = _qa_pairs(request.question, request.context, "question"), \
            isinstance(request.question, str) and isinstance(request.context, str)
        return inputs, params, "pipeline-single" if single else "pipeline"
    if key == "pipeline_inputs":
        single = not isinstance(request.inputs, list)
        items = [request.inputs] if single else request.inputs
        return [_plain(x) for x in items], params, "pipeline-single" if single else "pipeline"

    data = request.input_data if key == "catalog_data" else request.inputs
    if isinstance(data, InputStrings):
        inputs = list(data.input_string)
    elif isinstance(data, QAInputData):
        inputs = _qa_pairs(data.question, data.context, "input_data.question")
    else:
        inputs = [_plain(x) for x in data]
    return inputs, params, "catalog-full" if return_full else "catalog"


def format_response(task: str, results: list, shape: str, params: dict | None = None) -> Any:
    """`task.run` results -> the response body for a request of `shape` (see the module docstring).

    Catalog shapes give one entry per input; question answering gives answer strings there unless
    the shape is "catalog-full". Pipeline shapes unwrap as the transformers pipelines do.
    Numpy scalars become plain numbers, so the result always serializes as JSON.
    """
    task = task_name(task)
    params = params or {}
    if task in schemas_embed.TASKS:
        results = [schemas_embed.jsonable_result(task, r) for r in results]
    results = _jsonable(results)
    if shape == "catalog":
        if task == "question-answering":
            return [[a["answer"] for a in r] if isinstance(r, list) else r["answer"] for r in results]
        return results
    if shape == "catalog-full":
        return results
    if shape not in ("pipeline", "pipeline-single"):
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    single = shape == "pipeline-single"
    if task == "fill-mask":
        return results[0] if single or len(results) == 1 else results
    if task == "question-answering":
        return results[0] if len(results) == 1 else results
    if task == "text-classification":
        if single:
            # The pipeline wraps one plain string's legacy {label, score} in a list.
            return [results[0]] if params.get("legacy", True) and isinstance(results[0], dict) else results[0]
        return results
    return results[0] if single else results  # token-classification and the tasks of schemas_embed


# ---------------------------------------------------------------------------------------- helpers
def _validate(model: type[BaseModel], body: dict) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # With unions pydantic reports one error per member; the deepest one is the most telling
        # ({"input_data": ["ok", 3]} -> input_data.1 is not a string, not "input_data is no object").
        errors = [(_field(err["loc"]), err) for err in e.errors(include_url=False)]
        field, first = max(errors, key=lambda fe: fe[0].count(".") + 1 if fe[0] else 0)
        field = field or "body"
        message = _MESSAGES.get(first["type"], first["msg"])
        raise InputError(f"{field}: {message}", field) from None


_MESSAGES = {
    "string_pattern_mismatch": "is blank",
    "string_too_short": "is empty",
    "extra_forbidden": "is not an accepted field",
}
_TYPE_TAGS = {"str", "int", "bool", "float", "none", "list", "dict", "constrained-str", "constrained-int"}


def _field(loc: tuple) -> str:
    """pydantic's error location without the union-member tags it inserts ("constrained-str",
    "list[...]", model names): "inputs.input_string.1"."""
    models = {"TextPair", "QAExample", "QAInputData", "InputStrings", *schemas_embed.MODELS,
              *(p.__name__ for p in PARAMETERS.values())}
    return ".".join(str(part) for part in loc
                    if not (isinstance(part, str) and (part in _TYPE_TAGS or part in models or "[" in part)))


def _qa_pairs(question: str | list[str], context: str | list[str], field: str) -> list[dict]:
    if isinstance(question, list) and isinstance(context, list):
        if len(question) != len(context):
            raise InputError(f"{len(question)} questions and {len(context)} contexts: lists must be of the same length",
                             field)
        return [{"question": q, "context": c} for q, c in zip(question, context)]
    if isinstance(question, list):
        return [{"question": q, "context": context} for q in question]
    if isinstance(context, list):
        return [{"question": question, "context": c} for c in context]
    return [{"question": question, "context": context}]


def _plain(x: Any) -> Any:
    if isinstance(x, BaseModel):
        return x.model_dump(exclude_none=True)
    return x


def _check_ints(params: dict) -> None:
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= _INT_LIMIT for v in values):
            raise InputError(f"parameters.{name} is out of range", f"parameters.{name}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if type(x).__module__ == "numpy" and hasattr(x, "item"):
        return x.item()
    return x


def _json_type(x: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(x), type(x).__name__)


def example_requests(task: str, mask_token: str = "[MASK]") -> dict[str, dict]:
    """Request bodies from the seed cards, for documentation and the OpenAPI examples."""
    task = task_name(task)
    if task in schemas_embed.TASKS:
        return schemas_embed.TASKS[task]["examples"]
    if task == "fill-mask":
        return {
            "catalog": {"inputs": {"input_string": [f"Paris is the {mask_token} of France.",
                                                    f"Today is a {mask_token} day!"]},
                        "parameters": {"top_k": 2}},
            "pipeline": {"inputs": f"Paris is the {mask_token} of France.", "parameters": {"top_k": 2}},
        }
    if task == "question-answering":
        return {
            "catalog": {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}},
            "pipeline": {"question": "What's my name?", "context": "My name is John and I live in Seattle"},
        }
    if task == "text-classification":
        return {"catalog": {"input_data": ["I love this!", "This is terrible."]},
                "pipeline": {"inputs": "I love this!", "parameters": {"top_k": 2}}}
    return {"catalog": {"input_data": ["My name is Wolfgang and I live in Berlin."]},
            "pipeline": {"inputs": "My name is Wolfgang and I live in Berlin."}}


__all__ = [
    "TASK_NAMES", "SHAPES", "RESPONSE_OPTIONS", "PARAMETERS", "REQUEST_MODELS", "RESPONSE_TYPES", "ErrorBody",
    "FillMaskParameters", "QuestionAnsweringParameters", "TextClassificationParameters",
    "TokenClassificationParameters", "TextPair", "QAExample", "InputStrings", "QAInputData",
    "FillMaskToken", "Answer", "Label", "Entity", "parse_request", "format_response", "request_schema",
    "task_name", "example_requests",
]
