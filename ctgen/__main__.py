from ctgen.cli import main

main()
