"""`python -m diffusers_lumina_mgpt` runs the `lumina-mgpt` command line."""

from .cli import main

raise SystemExit(main())
