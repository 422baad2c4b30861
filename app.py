"""The depth2img web app (Spaces convention: `python app.py`). Same as `depth2img app`; flags and the
DEPTH2IMG_* environment variables are documented in `depth2img app --help`."""

import sys

from depth2img.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
