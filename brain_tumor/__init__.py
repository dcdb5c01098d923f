"""Shared logic of the brain-tumor DVC pipeline; the scripts under stages/ are thin wrappers."""
