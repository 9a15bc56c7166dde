"""Scene outputs as HDF5: the FITS file's content for fields of thousands of sources.

``galprism separate --scene --format hdf5`` writes ``<stem>.galprism.h5``: every image
HDU of the FITS output as a dataset of the same name and shape (float32), each with its
FITS header as the ``header`` attribute (WCS, BUNIT and axis names included, so
``astropy.io.fits.Header.fromstring(ds.attrs["header"], sep="\\n")`` gives it back), the
primary header as the file's ``header`` attribute, and the catalogue as the table
``CATALOG`` written by astropy (units and descriptions kept; ``Table.read(path,
path="CATALOG")``). Datasets are chunked and compressed (LZF) where large, which a FITS
image HDU cannot be.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
from astropy.io import fits
from astropy.table import Table

from ..atomic import atomic_path

__all__ = ["write_hdf5", "HDF5_FORMAT"]

#: The ``format`` attribute of the file.
HDF5_FORMAT = "galprism-scene"
#: Datasets above this many bytes are chunked and LZF-compressed.
_COMPRESS_BYTES = 1 << 20


def write_hdf5(
    hdus: fits.HDUList, catalog: Table, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write the image HDUs of ``hdus`` and ``catalog`` to one HDF5 file, atomically.

    Raises
    ------
    GalprismError
        If ``path`` exists and ``overwrite`` is false, or it cannot be written.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = HDF5_FORMAT
            f.attrs["header"] = hdus[0].header.tostring(sep="\n")
            for hdu in hdus[1:]:
                if not isinstance(hdu, fits.ImageHDU):
                    continue  # the catalogue goes in through astropy, below
                big = hdu.data.nbytes > _COMPRESS_BYTES
                ds = f.create_dataset(
                    hdu.name, data=hdu.data, compression="lzf" if big else None, shuffle=big
                )
                ds.attrs["header"] = hdu.header.tostring(sep="\n")
        catalog.write(tmp, path="CATALOG", format="hdf5", append=True, serialize_meta=True)
    return path
