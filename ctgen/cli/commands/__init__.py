"""The CLI's commands, one module each: ``OPTIONS`` (plain ``ctgen.cli.options.Option`` data) and the command's
body, a function of the same name. Modules import no Typer, numpy, ONNX Runtime or pydicom at the top (the fast
path imports them to read ``OPTIONS``; ``ctgen --help`` must stay fast): the bodies import what they use."""
