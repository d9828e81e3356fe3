"""Test scaffolding shipped with the package: tiny randomly initialised Hugging Face VLMs built offline from
configs (``hf_tiny``), for the test suite and for trying the notebooks without real weights."""
