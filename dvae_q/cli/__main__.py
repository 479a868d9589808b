import sys

from dvae_q.cli.main import main

sys.exit(main())
