"""`sdft plan`: what a configuration needs per GPU, from the model's config alone (docs/plan.md)."""
