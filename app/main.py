"""Run the report from a source checkout: ``streamlit run app/main.py -- RUN [RUN2]``.

Installed, ``resdoctor app RUN [RUN2]`` starts the same page (``resdoctor/app/main.py``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's resdoctor

from resdoctor.app.main import main  # noqa: E402

main()
