"""``python -m wsgi_db_pool check``: does a pool configuration fit the database server?"""

from __future__ import annotations

import sys

from ._doctor import main

if __name__ == "__main__":
    sys.exit(main())
