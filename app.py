"""Run the ExTES study app: `python app.py [--host H] [--port P] [--protocol FILE] [--db PATH_OR_URL]`.

Defaults: http://127.0.0.1:7860 (or $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT), eval_protocol/default.yaml,
results/study.sqlite. Everything lives in extes.study; this file only starts it.
"""

import sys

from extes.study.app_cli import main

if __name__ == "__main__":
    sys.exit(main())
