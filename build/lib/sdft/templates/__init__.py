"""Prompt templates for distillation, training and evaluation."""

from sdft.templates.prompts import (DISTILL_TEMPLATE_NAMES, TEXT_TEMPLATES, TemplateError, encode_example,
                                    encode_prompt, prompt_text)

__all__ = ["DISTILL_TEMPLATE_NAMES", "TEXT_TEMPLATES", "TemplateError", "encode_example", "encode_prompt",
           "prompt_text"]
