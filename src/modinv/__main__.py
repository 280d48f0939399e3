import sys

from modinv.cli import main

sys.exit(main())
