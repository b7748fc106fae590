"""`python -m mcp_autonomy` runs the command line."""

from mcp_autonomy.cli import main

raise SystemExit(main())
