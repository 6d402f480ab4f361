"""``python -m groundiff_core.book``: execute the book's notebooks (see :mod:`.runner`)."""

import sys

from groundiff_core.book.runner import main

sys.exit(main())
