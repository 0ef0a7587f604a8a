"""Reading and writing: DICOM (``dicom/``), NIfTI, the archive inventory (``scan``), slice sources, output files
(``writers``, committed atomically by ``atomic``) and latent files (``latent_io``). Nothing here runs a model."""
