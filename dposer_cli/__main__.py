"""`python -m dposer_cli` (also what torchrun runs)."""

from dposer_cli.cli.app import main

if __name__ == "__main__":
    main()
