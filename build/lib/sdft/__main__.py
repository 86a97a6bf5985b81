import sys

from sdft.cli import main

sys.exit(main())
