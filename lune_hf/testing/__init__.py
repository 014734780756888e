"""Models and data made on the spot, for the demo, the tests and the benchmarks (nothing is downloaded):
`synthetic` builds a tiny Llama that memorises invented facts; `smollm2` builds SmolLM2-135M-Instruct offline from
a PyPI wheel. Not needed to unlearn a real model."""
