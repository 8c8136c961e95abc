"""Reports of a run: image grids as PNG in pure stdlib (:mod:`elbokit.report.images`), the figures
(:mod:`elbokit.report.plots`, the only matplotlib import in the package) and the self-contained ``report.html``
(:mod:`elbokit.report.html`).

Nothing in the core imports this package, and this file imports neither submodule that needs matplotlib: a user
who never asks for a report never loads it.
"""
