# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, launch the app on the tiny default model
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps clean

# ffmpeg/ffprobe: segments and probing; espeak-ng: the app's text to speech; chromium: the browser tests
SYSTEM_TOOLS := ffmpeg ffprobe espeak-ng chromium
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng chromium >/dev/null; fi

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: system-deps $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python app.py

clean:
	rm -rf $(VENV) .pytest_cache
