"""The ffx library: one module per concept, plain functions and small dataclasses, no orchestration."""
