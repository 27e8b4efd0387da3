"""Subcommands of the ``parscale`` CLI. Each module defines ``add_parser(subparsers)``; the parser
it adds carries its handler as ``func``. Modules import heavy libraries inside handlers only, so
``--help`` stays fast."""
