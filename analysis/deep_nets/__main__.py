"""``python -m analysis.deep_nets --profile quick [--only fig1 noisy ...]``"""

import sys

from analysis.deep_nets import main

sys.exit(main())
