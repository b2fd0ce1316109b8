import sys

from seg2refine_core.cli import main

sys.exit(main())
