"""Other probabilistic-programming libraries' models as elbokit models and guides.

Each submodule imports its library only when it is imported itself: ``elbokit.interop.pyro`` needs the ``pyro``
extra (``pip install 'elbokit[pyro]'``).
"""
