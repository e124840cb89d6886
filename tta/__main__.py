import sys

from tta.cli import main

sys.exit(main())
