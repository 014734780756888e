"""TOFU support (the benchmark, not the library core): data loading (`data`), open-unlearning's prompts and
tokens (`template`), its metric graph (`evaluate`), fine-tuning and unlearning runs (`train`). Used by
`recipes/tofu/` and `benchmarks/tofu.py`; it stands on the core (config, data, objectives, trainer) and the
metrics, never the other way round."""
