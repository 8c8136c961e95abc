import sys

from elbokit.cli import main

sys.exit(main())
