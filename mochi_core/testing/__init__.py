"""Tiny random-weight Mochi models with the official key layouts, and writers for every published format.

Used by the test suite, the benchmarks and the demo (which labels such models clearly). Nothing here is
imported by the rest of `mochi_core`.
"""
