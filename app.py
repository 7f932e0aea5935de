"""liveact's web demo: `python app.py [--host H] [--port P] [--model M]` (LIVEACT_MODEL works too).

The app lives in `liveact/app.py`; this file is what `make demo` and a Hugging Face Space run.
"""

from liveact.app import main

if __name__ == "__main__":
    main()
