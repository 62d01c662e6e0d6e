import sys

from sgkernels.cli import main

sys.exit(main())
