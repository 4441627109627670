"""napari widgets and menu functions (Qt/magicgui code only, thin over the core).

Nothing is imported here: napari imports each manifest target (``_deblur``, ``_filter``) on
demand, and importing this package must stay cheap.
"""

__all__: list[str] = []
