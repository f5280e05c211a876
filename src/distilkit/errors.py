"""Errors a caller can act on. `InputError` names the offending field, so the CLI, the server
(4xx with a JSON body) and the batch job (errors file) can all report it the same way."""

from __future__ import annotations


class InputError(ValueError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
