"""``python -m yonos`` is the ``yonos`` command."""

from yonos.cli import main

if __name__ == "__main__":
    main()
