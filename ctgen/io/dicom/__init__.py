"""DICOM in and out: CT slices as Hounsfield units (``read``), and new de-identified CT series (``write``).

The writer builds each file from values passed explicitly and never sees an input dataset, so no input
attribute can leak. The public names of both modules are re-exported here.
"""

from __future__ import annotations

from ctgen.io.dicom.common import patient_key
from ctgen.io.dicom.limits import MAX_PIXELS_DEFAULT, MAX_PIXELS_ENV, max_pixels, set_max_pixels
from ctgen.io.dicom.read import AIR_HU, Slice, iter_dicom_files, read_frames, read_series, read_slice
from ctgen.io.dicom.write import STORED_OFFSET, SeriesWriter, write_series, write_slice

__all__ = ["SeriesWriter", "Slice", "read_slice", "read_frames", "read_series", "iter_dicom_files", "write_series",
           "write_slice", "patient_key", "AIR_HU", "STORED_OFFSET", "MAX_PIXELS_DEFAULT", "MAX_PIXELS_ENV",
           "max_pixels", "set_max_pixels"]
