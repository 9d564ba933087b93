import sys

from kizuna.kit.scaffold import main

sys.exit(main())
