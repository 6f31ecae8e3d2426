"""``python3 -m snf_image.helperimage``: build or update the helper image."""

import sys

from . import main

sys.exit(main())
