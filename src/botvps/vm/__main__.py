import sys

from botvps.vm.cli import main

sys.exit(main())
