"""Step 3: fine-tuning (``recipe.run_train``): the recipe, its objective, backends, batching and checkpoints."""
