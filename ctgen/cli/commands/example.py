"""ctgen example: the small example slices that ship with ctgen, to try every command at once."""

from __future__ import annotations

from ctgen.cli.options import Option

OPTIONS = (
    Option("name", metavar="[NAME]", help="Example to print the path of.", show_default=False),
    Option("folder", ("--folder",), "bool", False, "Print the folder that holds all the examples."),
)


def example(*, name, folder) -> None:
    """Print the path of an example CT slice (or, without NAME, list them): phantom slices of different
    patients and levels that ship with ctgen, for trying the commands right after installing:

    ctgen traverse $(ctgen example a) --units 0-4
    """
    from ctgen.errors import ArgumentError
    from ctgen.examples import EXAMPLES, example_path

    if folder:
        print(example_path(next(iter(EXAMPLES))).parent)
        return
    if name is None:
        for key, description in EXAMPLES.items():
            print(f"{key}\t{example_path(key)}\t{description}")
        return
    if name not in EXAMPLES:
        raise ArgumentError("name", f"no example {name!r}; choose {', '.join(EXAMPLES)}")
    print(example_path(name))
