"""Tasks: the algorithms behind the commands, tensors and dataclasses in and out (no paths, no files)."""
