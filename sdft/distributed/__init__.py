"""Several ranks: process groups (``runtime``) and DeepSpeed configs (``deepspeed``)."""
