"""Reading survey cutouts and writing galprism's output FITS files.

Modules: :mod:`.fitsfile` (safe FITS access), :mod:`.read` (a cutout into an
:class:`~galprism.observation.Observation`), :mod:`.masks`, :mod:`.noise`, :mod:`.flux`,
:mod:`.psf`, :mod:`.wcsutil`, and :mod:`.write` (atomic output files with provenance).
Nothing is imported here so that :mod:`galprism.observation` can use the helpers without
an import cycle through :mod:`.read`.
"""
