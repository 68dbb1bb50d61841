import sys

from exmachina.bench.suite import main

sys.exit(main())
