"""Model card templates (Jinja), shipped inside the package as `lune_hf.model_cards`."""
