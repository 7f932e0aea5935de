# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, launch the app on the tiny default model
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps clean

# ffmpeg/ffprobe: video encoding and probing (PyAV and moviepy bring their own libraries, the tests use the CLI)
system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: system-deps $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	@echo "The Gradio app arrives in a later issue (#7); until then try the core: see README.md."

clean:
	rm -rf $(VENV) .pytest_cache
