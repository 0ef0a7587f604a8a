"""The explorer: ``ctgen explore``'s local web page (``explore``, its files in ``static/``) on a guarded HTTP server
(``serving``)."""
