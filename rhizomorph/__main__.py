import sys

from rhizomorph.cli import main

sys.exit(main())
