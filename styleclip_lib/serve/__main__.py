"""``python -m styleclip_lib.serve [--host 127.0.0.1 --port 8000 --model toy|ffhq]``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
