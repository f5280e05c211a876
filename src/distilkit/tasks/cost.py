"""What a request will cost before it runs: `Task.cost(inputs, params) -> Cost`.

The server compares a Cost with its per-request budget at admission (a 422 naming the field
and the limit when it is over) and cuts long work into pieces of bounded tokens. Estimates are
made from characters, without tokenizing, so they cost microseconds on the event loop: about
`CHARS_PER_TOKEN` characters a token, which is generous for prose (WordPiece and byte-level BPE
average about 4 on English) and low only for text of one-character words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class Cost:
    per_input: tuple[int, ...]  # estimated tokens through the model, per input (windows included)
    items: int  # result objects in the response (fill-mask: masks x top_k; QA: answers; labels; entities)
    response_bytes: int  # estimated size of the JSON answer
    items_field: str = "inputs"  # the request field to name when `items` is over the limit

    @property
    def tokens(self) -> int:
        return sum(self.per_input)


def text_tokens(text: object) -> int:
    """Estimated tokens of one text, without special tokens."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if isinstance(text, str) else 1


def n_windows(tokens: int, room: int, stride: int) -> int:
    """Windows of `room` tokens advancing by room - stride that cover `tokens` (tokenizer.windows)."""
    if tokens <= room:
        return 1
    step = max(room - stride, 1)
    return 1 + math.ceil((tokens - room) / step)
