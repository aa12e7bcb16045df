"""Quiet one false warning of diffusers' `ModelMixin.to`.

diffusers 0.42 warns "There are modules in X that should be kept in float32: []" on every
`model.to(dtype)`, even when the list is empty (its check tests `is not None` on a list that is never
None). Our models keep no module in float32, so the warning says nothing true; this filter drops exactly
that message (with an empty list) and nothing else.
"""

from __future__ import annotations

import logging


class _EmptyFp32ListFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("should be kept in float32: []" in message and message.startswith("There are modules in"))


def install() -> None:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFp32ListFilter) for f in logger.filters):
        logger.addFilter(_EmptyFp32ListFilter())
