"""Measuring a mesh: bench, chaos, the invariant checks and the demo."""
