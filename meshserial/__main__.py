from __future__ import annotations

from meshserial.cli import main

raise SystemExit(main())
