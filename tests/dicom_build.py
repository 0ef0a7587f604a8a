"""Building DICOM test data with pydicom and GDCM, free of pytest and ctgen: shared by the fixtures in
``conftest.py`` and by ``fuzz_dicom.py``, which runs in its own process under a memory limit."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


def functional_group(**sequences) -> Dataset:
    """One item of an enhanced multi-frame file's functional groups: ``PixelMeasuresSequence={"PixelSpacing":
    [0.5, 0.5]}`` becomes a one-item sequence of a dataset with those attributes."""
    group = Dataset()
    for keyword, attributes in sequences.items():
        item = Dataset()
        for name, value in attributes.items():
            setattr(item, name, value)
        setattr(group, keyword, Sequence([item]))
    return group


def gdcm_change_syntax(src: str | Path, dst: Path, syntax) -> str | None:
    """Re-encode ``src`` into ``dst`` with GDCM (pydicom has no JPEG / JPEG-LS encoders without extra packages).
    None when it worked, else the step that failed: "read", "change" (no encoder for ``syntax``) or "write".
    Raises ImportError without python-gdcm."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        return "read"
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    change.SetInput(reader.GetImage())
    if not change.Change():
        return "change"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    return None if writer.Write() else "write"
