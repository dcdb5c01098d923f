"""Shared logic of the brain-tumor DVC pipeline; the scripts under stages/ are thin wrappers."""

from brain_tumor.core.numerics import configure

configure()  # before torch runs anything: the instruction-set caps and thread counts of reproducible mode
