"""Parallel building blocks: layer factory, topology and device set-up, CPU gloo backend."""
