import sys

from exmachina.bench.cli import main

sys.exit(main())
