"""liveact's web demo: `python app.py [--host H] [--port P] [--model M] [--wav2vec W]` (LIVEACT_MODEL, LIVEACT_WAV2VEC work too).

The app lives in `liveact/app.py`; this file is what `make demo` and a Hugging Face Space run.
"""

import os
from pathlib import Path


def use_persistent_storage(data: Path = Path("/data")) -> None:
    """Keep the Hugging Face cache on a Space's persistent storage (mounted at `data`) so the weights survive
    restarts; an HF_HOME already set wins. Called before huggingface_hub is imported: it reads HF_HOME then."""
    if data.is_dir():
        os.environ.setdefault("HF_HOME", str(data / ".huggingface"))


if __name__ == "__main__":
    use_persistent_storage()
    from liveact.app import main

    main()
