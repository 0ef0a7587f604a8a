"""Images: HU onto the model grid and back (``preprocess``, ``geometry``, ``grid_reader``), pictures (``render``)
and charts (``charts``). Pure numpy and Pillow."""
