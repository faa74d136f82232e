"""Leaf layer: parts table, configs, errors, paths, devices and shared types."""
