"""Checkpoint files: open (memory-mapped safetensors, pickles refused), detect the layout, map keys.

One small module per family; :mod:`.io` is the only place that touches the file system.
"""
