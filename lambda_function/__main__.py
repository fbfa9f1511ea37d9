"""``python -m lambda_function IMAGE_OR_URL...`` is ``python -m lambda_function.predict``."""

import sys

from lambda_function.predict import main

sys.exit(main())
