"""Prompt templates for distillation, training and evaluation, and how they become token ids."""

from sdft.templates.prompts import (
    DISTILL_TEMPLATE_NAMES,
    LAYOUTS,
    TASK_TEMPLATE_NAMES,
    TEXT_TEMPLATES,
    encode_example,
    encode_prompt,
    encode_prompt_fit,
    encode_turns,
    prompt_text,
)

__all__ = ["DISTILL_TEMPLATE_NAMES", "LAYOUTS", "TASK_TEMPLATE_NAMES", "TEXT_TEMPLATES", "encode_example",
           "encode_prompt", "encode_prompt_fit", "encode_turns", "prompt_text"]
