"""Prompt templates for distillation, training and evaluation."""

from sdft.templates.prompts import (DISTILL_TEMPLATE_NAMES, TASK_TEMPLATE_NAMES, TEXT_TEMPLATES, encode_example,
                                    encode_prompt, prompt_text)

__all__ = ["DISTILL_TEMPLATE_NAMES", "TASK_TEMPLATE_NAMES", "TEXT_TEMPLATES", "encode_example", "encode_prompt",
           "prompt_text"]
