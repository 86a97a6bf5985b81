"""The shipped DeepSpeed configs, installed as package data ``sdft.distributed.ds_configs`` (this file
makes the folder a package, so editable and wheel installs find the JSON files the same way)."""
