"""``python -m groundiff_core.book``: execute the book's notebooks (see :mod:`.runner`)."""

import sys

from groundiff_core.book.runner import main

if __name__ == "__main__":  # guarded: the runner's worker processes (--jobs) must not run it again
    sys.exit(main())
