"""``python3 -m snf_image``: the ``snf-image`` command without installing it."""

import sys

from .cli import main

sys.exit(main())
