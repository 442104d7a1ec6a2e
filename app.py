"""Run the ExTES study app: `python app.py [--host H] [--port P] [--protocol FILE] [--db PATH_OR_URL]`.

Defaults: http://127.0.0.1:7860 (or $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT), eval_protocol/default.yaml,
results/study.sqlite. The app lives in extes.study and its verb in extes.commands.app_cli; this file only starts it.
"""

import sys

from extes.commands.app_cli import main

if __name__ == "__main__":
    sys.exit(main())
