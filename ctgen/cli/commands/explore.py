"""ctgen explore: turn the latent knobs in a local web page."""

from __future__ import annotations

from ctgen.cli.options import Option, shared

OPTIONS = (
    Option("slice_path", metavar="SLICE.dcm", show_default=False,
           help="Start from this CT slice (encoded to its mean latent) instead of the prior mean; a file, or "
                "VOLUME#K."),
    *shared("slice_index"),
    Option("port", ("--port", "-p"), "int", 8765, "TCP port (0: any free port).", bounds="port"),
    Option("host", ("--host",), "str", "127.0.0.1",
           "Address to listen on. Anything but loopback lets other machines use the explorer (no authentication): "
           "a warning is printed."),
    Option("no_browser", ("--no-browser",), "bool", False, "Do not open a web browser."),
    *shared("seed", "window", "model", "device", "json_summary", "quiet"),
)


def explore(*, slice_path, slice_index, port, host, no_browser, seed, window, model, device, json_summary,
            quiet) -> None:
    """Explore the latent space in a web page: one slider per latent unit, live decoding.

    Serves a local page (loopback only unless --host is given) and opens it in the browser. Sliders are
    ordered by KL and named by the factor each unit carries when the card knows it; start from the prior
    mean, a seeded random sample or an uploaded DICOM slice, scrub an interpolation between two vectors,
    and export the image (PNG, DICOM) or the latent (JSON). --window sets the page's first display
    window; --json prints {"url": …} on stdout once the server listens. Stop with Ctrl+C.
    """
    import sys
    import webbrowser
    from pathlib import Path

    from ctgen.cli.run import Run
    from ctgen.explorer.explore import ExploreServer, is_loopback
    from ctgen.images.render import parse_window

    with Run("explore", quiet=quiet, json_summary=json_summary) as run:
        display = parse_window(window)
        generator = run.load_generator(model, device)
        start, label = None, "prior mean"
        if slice_index is not None and slice_path is None:
            from ctgen.errors import ArgumentError

            raise ArgumentError("slice_index", "picks a slice of SLICE.dcm; give one")
        if slice_path is not None:
            loaded = generator.load(slice_path, slice_index=slice_index)
            start, label = generator.encode(loaded)[0], Path(loaded.source).name
        try:
            server = ExploreServer(generator, (host, port), start=start, start_label=label, seed=seed, window=display)
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {host}:{port} ({error.strerror or error}; try another "
                                       "--port)") from None
        scope = "loopback only" if is_loopback(host) else "reachable from other machines"
        run.note(f"ctgen: serving on {server.url.rstrip('/')} ({scope}); model {generator.card.name} on "
                 f"{generator.model.provider}; Ctrl+C stops")
        if not is_loopback(host):
            run.warn(f"--host {host} is not loopback: anyone who can reach this machine can use the explorer "
                     "and upload files to it (there is no authentication)")
        run.finish(url=server.url, host=host, port=server.server_address[1])
        if not no_browser:
            webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("ctgen: stopped", file=sys.stderr, flush=True)
        finally:
            server.server_close()
