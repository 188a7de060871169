"""``python -m edgehub.cli``: the same as the ``edgehub`` command."""

from .main import main

main()
