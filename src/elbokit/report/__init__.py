"""Reports of a run: image grids written as PNG without matplotlib (:mod:`elbokit.report.images`).

Nothing in the core imports this package; it reads tensors and writes files.
"""
