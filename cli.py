"""`python cli.py ...` runs the same Typer app as the `latentstore` console script."""

from latentstore.cli import main

if __name__ == "__main__":
    main()
