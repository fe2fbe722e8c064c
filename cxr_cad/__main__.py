import sys

from cxr_cad.cli import main

sys.exit(main())
